"""The client SDK and the CLI's ``--server`` commands load no model code: no torch, no open_clip.

Each case runs in a fresh interpreter (this one has torch loaded already) against a port where
nothing listens, so the command fails fast with UNAVAILABLE after its imports are done.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "open_clip", "torchvision", "torchaudio")
NOWHERE = "127.0.0.1:1"

_RUN_CLI = """
import json, sys
from mmsearch.cli import main
rc = main(sys.argv[1:])
heavy = sorted(m for m in {heavy} if m in sys.modules)
print(json.dumps({{"rc": rc, "heavy": heavy}}))
"""


def _run(code: str, *args: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["stderr"] = proc.stderr
    return result


def test_client_imports_neither_torch_nor_open_clip() -> None:
    code = (
        "import json, sys\n"
        "import mmsearch.client\n"
        f"print(json.dumps({{'heavy': sorted(m for m in {HEAVY} if m in sys.modules)}}))"
    )
    assert _run(code)["heavy"] == []


@pytest.mark.parametrize(
    "argv",
    [
        ["search", "--server", NOWHERE, "--text", "a cat"],
        ["stats", "--server", NOWHERE],
        ["mine", "--server", NOWHERE, "--text", "a cat"],
        ["health", "--server", NOWHERE],
        ["ingest", "--server", NOWHERE, "--no-progress", "{media}"],
    ],
    ids=lambda argv: argv[0],
)
def test_server_commands_load_no_model_code(argv: list[str], tmp_path: Path) -> None:
    (tmp_path / "note.txt").write_text("a cat on a mat")
    argv = [a.replace("{media}", str(tmp_path)) for a in argv]
    out = _run(_RUN_CLI.format(heavy=HEAVY), *argv)
    assert out["rc"] == 1 and "UNAVAILABLE" in str(out["stderr"]), out["stderr"]
    assert out["heavy"] == [], f"{argv[0]} --server loaded {out['heavy']}"
