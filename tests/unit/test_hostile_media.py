"""Hostile audio and video (issue 13): inputs that name server files, tiny files that decode to
gigabytes, a worker past its memory limit, and workers left behind by a killed parent."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import av
import pytest

from encoders.av_decode import open_container
from encoders.decode import MediaDecoder
from encoders.errors import MediaDecodeError
from encoders.media import decode_image
from encoders.sniff import Container, sniff_bytes
from encoders.workers import IsolatedRunner
from tests.media import (
    make_image,
    tone,
    with_flac_total_samples,
    write_audio,
    write_flat_video,
    write_silence_flac,
    write_video,
)

REPO = Path(__file__).resolve().parents[2]
MiB = 1024**2
# Peak memory and process state are read from /proc; parent-death signals are Linux's.
linux_only = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")


@pytest.fixture(scope="module")
def decoder() -> Iterator[MediaDecoder]:
    d = MediaDecoder(timeout=60)
    yield d
    d.close()


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real media files on the 'server's disk' that no client may read through the decoder."""
    root = tmp_path_factory.mktemp("server")
    return {
        "audio": write_audio(root / "canary.wav", tone(4, 2.0)),
        "video": write_video(root / "canary.mp4", [make_image(5)] * 4, fps=2),
    }


def _references(path: Path) -> dict[str, bytes]:
    """Inputs that make FFmpeg's auto-detection open `path`. The old decoder wrote uploads to the
    temp dir, and concat resolves a plain relative path against the list's own location."""
    relative = os.path.relpath(path, tempfile.gettempdir())
    return {
        "ffconcat": f"ffconcat version 1.0\nfile '{relative}'\n".encode(),
        "ffconcat-absolute": f"ffconcat version 1.0\nfile '{path}'\n".encode(),
        "concat-url": f"ffconcat version 1.0\nfile 'file:{path}'\n".encode(),
        "hls": f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:2.0,\n{relative}\n#EXT-X-ENDLIST\n".encode(),
        "sdp": f"v=0\no=- 0 0 IN IP4 127.0.0.1\ns={path}\nc=IN IP4 127.0.0.1\nm=audio 5004 RTP/AVP 0\n".encode(),
    }


def _peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # dead, waiting for init to reap it


# -- 1. untrusted bytes never name a file ----------------------------------------------------


@pytest.mark.parametrize("kind", ["audio", "video"])
def test_reference_inputs_are_refused_alike_whether_the_path_exists_or_not(
    decoder: MediaDecoder, canary: dict[str, Path], kind: str
) -> None:
    decode = decoder.audio if kind == "audio" else decoder.video
    real = canary[kind]
    missing = real.with_name("missing" + real.suffix)
    for label in _references(real):
        errors = []
        for path in (real, missing):
            with pytest.raises(MediaDecodeError) as exc:
                decode(_references(path)[label], name=f"upload-{label}")
            errors.append(str(exc.value))
        assert errors[0] == errors[1], label
        assert errors[0].startswith(f"upload-{label}: not an accepted {kind} format (accepted: ")
        assert "MP4/M4A/MOV" in errors[0] and real.name not in errors[0]


def test_a_reference_list_on_disk_is_refused_too(
    decoder: MediaDecoder, canary: dict[str, Path], tmp_path: Path
) -> None:
    playlist = tmp_path / "song.wav"
    playlist.write_bytes(_references(canary["audio"])["ffconcat-absolute"])
    with pytest.raises(MediaDecodeError, match=r"song\.wav: not an accepted audio format"):
        decoder.audio(playlist, name="song.wav")


def test_a_forced_demuxer_cannot_open_other_files(
    canary: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second wall: even a reference demuxer, opened the way the worker opens inputs, reads
    nothing but the bytes it was given (nested opens get an empty protocol whitelist)."""
    monkeypatch.chdir(canary["audio"].parent)
    listing = b"ffconcat version 1.0\nfile 'canary.wav'\n"
    with av.open(io.BytesIO(listing), format="concat") as plain:  # FFmpeg's defaults read it
        assert plain.streams.audio
    with (
        pytest.raises(MediaDecodeError, match="not a readable concat file"),
        open_container(io.BytesIO(listing), "concat", label="concat"),
    ):
        pass


def test_sniffing_accepts_every_supported_format_and_nothing_else(tmp_path: Path) -> None:
    audio = {
        ext: write_audio(tmp_path / f"a{ext}", tone(0, 0.5))
        for ext in (".wav", ".flac", ".mp3", ".ogg", ".m4a")
    }
    video = {
        ext: write_video(tmp_path / f"v{ext}", [make_image(0)] * 2, fps=2)
        for ext in (".mp4", ".webm", ".mkv", ".mov", ".avi")
    }
    expected = {".wav": Container.WAV, ".flac": Container.FLAC, ".mp3": Container.MP3, ".ogg": Container.OGG}
    expected |= {".m4a": Container.MP4, ".mp4": Container.MP4, ".mov": Container.MP4, ".avi": Container.AVI}
    expected |= {".webm": Container.MATROSKA, ".mkv": Container.MATROSKA}
    for ext, path in {**audio, **video}.items():
        assert sniff_bytes(path.read_bytes()) == expected[ext], ext
    for data in [
        *_references(Path("/etc/passwd")).values(),
        b"",
        b"hello",
        b"\x89PNG\r\n\x1a\n" + b"\0" * 8,
        b"\xff\xf1\x50\x80",
    ]:
        assert sniff_bytes(data) is None, data[:20]


def test_images_are_limited_to_the_listed_formats() -> None:
    buf = io.BytesIO()
    make_image(1).save(buf, format="PPM")  # Pillow reads PPM (and EPS, PSD, FITS, ...) by default
    with pytest.raises(
        MediaDecodeError, match=r"q\.png: not a recognised image format \(accepted: JPEG, PNG"
    ):
        decode_image(buf.getvalue(), name="q.png")


# -- 2. bounded cost -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_4k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 24 frames of 4K at 1 fps: ~20 KB, 600 MB of RGB if every sampled frame is kept full size.
    return write_flat_video(tmp_path_factory.mktemp("4k") / "flat.mp4", (3840, 2160), frames=24)


@pytest.fixture(scope="module")
def silent_hour(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_silence_flac(tmp_path_factory.mktemp("hour") / "silence.flac", 3600.0)


@linux_only
def test_a_tiny_4k_video_decodes_in_bounded_memory(tiny_4k: Path) -> None:
    assert tiny_4k.stat().st_size < 100_000
    d = MediaDecoder(workers=1, timeout=60)
    try:
        video = d.video(tiny_4k.read_bytes(), name="flat.mp4")
        (pid,) = d.runner.pids()
        peak = _peak_rss(pid)
    finally:
        d.close()
    assert video.frames.shape == (24, 256, 455, 3) and video.duration == pytest.approx(24.0)
    # Idle, a worker holds ~50 MB; a 4K frame in flight adds tens. The old one peaked at 3 GB.
    assert peak < 256 * MiB, peak / MiB


def test_video_caps_refuse_before_decoding(tiny_4k: Path) -> None:
    data = tiny_4k.read_bytes()
    d = MediaDecoder(workers=1, timeout=60, max_frame_pixels=1920 * 1080, max_video_seconds=10)
    try:
        with pytest.raises(MediaDecodeError) as exc:
            d.video(data, name="flat.mp4")
        assert str(exc.value) == (
            "flat.mp4: video frames are 3840x2160 pixels, above the 2073600 pixel limit (max_frame_pixels)"
        )
        d.limits = replace(d.limits, max_frame_pixels=3840 * 2160)
        with pytest.raises(
            MediaDecodeError, match=r"flat\.mp4: video lasts 24 s, above the 10 s limit \(max_video_seconds\)"
        ):
            d.video(data, name="flat.mp4")
    finally:
        d.close()


@linux_only
def test_an_hour_of_silent_flac_decodes_in_bounded_memory(silent_hour: Path) -> None:
    assert silent_hour.stat().st_size < 1_000_000
    d = MediaDecoder(workers=1, timeout=60)
    try:
        audio = d.audio(silent_hour.read_bytes(), name="silence.flac")
        (pid,) = d.runner.pids()
        peak = _peak_rss(pid)
    finally:
        d.close()
    assert audio.duration == pytest.approx(3600.0)
    # The samples themselves are 230 MB (an hour at 16 kHz, float32); the old worker peaked at 4.5 GB.
    assert peak < 400 * MiB, peak / MiB


def test_audio_cap_is_checked_against_the_header_and_while_decoding(silent_hour: Path) -> None:
    data = silent_hour.read_bytes()
    d = MediaDecoder(workers=1, timeout=60, max_audio_seconds=600)
    try:
        with pytest.raises(MediaDecodeError) as exc:
            d.audio(data, name="silence.flac")
        assert str(exc.value) == "silence.flac: audio lasts 3600 s, above the 600 s limit (max_audio_seconds)"
        for total in (16_000, 0):  # a header that claims one second, one that claims nothing
            with pytest.raises(MediaDecodeError) as exc:
                d.audio(with_flac_total_samples(data, total), name="liar.flac")
            assert str(exc.value) == (
                "liar.flac: audio runs longer than the 600 s limit (max_audio_seconds), whatever its header says"
            )
        assert d.audio(
            write_audio(silent_hour.with_name("ok.wav"), tone(1, 1.0)), name="ok.wav"
        ).duration == pytest.approx(1.0)
    finally:
        d.close()


def test_a_file_over_the_memory_limit_fails_alone(silent_hour: Path, tmp_path: Path) -> None:
    # An idle worker maps ~200 MB; the hour's samples need 230 MB more.
    d = MediaDecoder(workers=1, timeout=60, memory_limit=384 * MiB)
    ok = write_audio(tmp_path / "ok.flac", tone(2, 2.0))
    try:
        assert d.audio(ok, name="ok.flac").duration == pytest.approx(2.0, abs=0.05)
        (before,) = d.runner.pids()
        with pytest.raises(MediaDecodeError) as exc:
            d.audio(silent_hour, name="silence.flac")
        assert str(exc.value) == (
            "silence.flac: ran out of memory: decoding needs more than the 384 MiB limit (memory_limit)"
        )
        assert d.audio(ok, name="ok.flac").duration == pytest.approx(2.0, abs=0.05)
        assert d.runner.pids() != [before]  # the worker that hit the limit was replaced
    finally:
        d.close()


# -- 3. workers die with their parent --------------------------------------------------------

_PARENT = """
import sys, threading, time
from encoders.decode import MediaDecoder
d = MediaDecoder(workers=2)
d.start()
print(*d.runner.pids(), flush=True)
for _ in range(2):  # keep both workers busy, as they are mid-decode
    threading.Thread(target=d.runner.run, args=("time:sleep", (60,)), kwargs={"timeout": 120, "name": "x"}).start()
time.sleep(1)
print("busy", flush=True)
time.sleep(120)
"""


@linux_only
def test_workers_die_when_their_parent_is_killed() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert parent.stdout.readline().strip() == "busy"
        assert len(pids) == 2 and not any(_gone(p) for p in pids)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 5
        while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_gone(p) for p in pids)
    finally:
        parent.kill()
        parent.wait()


def test_workers_outlive_the_thread_that_started_them() -> None:
    # PR_SET_PDEATHSIG follows the thread that forks; callers use short-lived pool threads.
    runner = IsolatedRunner(1)
    try:
        starter = threading.Thread(target=runner.start)
        starter.start()
        starter.join()
        time.sleep(0.5)
        (pid,) = runner.pids()
        assert runner.run("os:getpid", (), timeout=30, name="x") == pid
    finally:
        runner.close()


def test_a_decode_stops_when_the_callers_time_runs_out(silent_hour: Path) -> None:
    # The hour takes seconds to decode; a caller with 0.2 s left gets its answer in about that.
    d = MediaDecoder(workers=1, timeout=60)
    try:
        d.start()
        start = time.perf_counter()
        with pytest.raises(MediaDecodeError, match=r"took longer than 0\.2 s"):
            d.audio(silent_hour.read_bytes(), name="silence.flac", time_left=0.2)
        assert time.perf_counter() - start < 2
        # the worker was replaced: the next file decodes
        assert d.audio(silent_hour.read_bytes(), name="silence.flac").duration == pytest.approx(3600.0)
    finally:
        d.close()
