"""Start `mmsearch serve` as a child process and wait until it serves: for the demo, the
benchmarks and the end-to-end tests, which all talk to a real server over a real socket."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

READY = "mmsearch serving on "


@dataclass
class LaunchedServer:
    proc: subprocess.Popen[str]
    target: str  # HOST:PORT
    output: list[str]  # every line the server has printed so far (stdout and stderr)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then wait for the exit code (SIGKILL if it does not come in `timeout`)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def launch_server(
    data_dir: Path,
    *extra: str,
    bundle: str = "tiny",
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
    echo: bool = False,
) -> LaunchedServer:
    """`mmsearch serve --data DATA_DIR --port 0 --bundle BUNDLE *extra`, ready to answer.
    Raises RuntimeError with the server's output when it exits or does not start in time.
    With `echo`, the server's lines are also printed as they come."""
    cmd = [sys.executable, "-m", "mmsearch", "serve", "--data", str(data_dir), "--port", "0"]
    cmd += ["--bundle", bundle, *extra]
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def pump() -> None:  # keeps reading so the server never blocks on a full pipe
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            lines.put(line)
            if echo:
                print(line, end="", flush=True)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            proc.kill()
            raise RuntimeError("the server did not start in time:\n" + "".join(output)) from None
        if line is None:
            raise RuntimeError(f"the server exited with code {proc.wait()}:\n" + "".join(output))
        if line.startswith(READY):
            return LaunchedServer(proc, line.split()[3], output)
