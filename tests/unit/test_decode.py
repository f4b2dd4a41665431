from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from encoders.decode import MediaDecoder
from encoders.errors import MediaDecodeError
from tests.media import image_bytes, make_image, tone, write_audio, write_video


@pytest.fixture(scope="module")
def decoder() -> Iterator[MediaDecoder]:
    d = MediaDecoder(timeout=60)
    yield d
    d.close()


@pytest.mark.parametrize("ext", [".wav", ".flac", ".mp3", ".ogg", ".m4a"])
def test_audio_formats_decode_to_mono_16k(decoder: MediaDecoder, tmp_path: Path, ext: str) -> None:
    path = write_audio(tmp_path / f"a{ext}", tone(3, 4.0))
    audio = decoder.audio(path, name=path.name)
    assert audio.sample_rate == 16_000 and audio.samples.ndim == 1
    assert audio.duration == pytest.approx(4.0, abs=0.1)


@pytest.mark.parametrize("ext", [".mp4", ".webm", ".mkv", ".mov", ".avi"])
def test_video_formats_decode_frames_at_1fps_and_the_audio_track(
    decoder: MediaDecoder, tmp_path: Path, ext: str
) -> None:
    path = write_video(tmp_path / f"v{ext}", [make_image(i) for i in range(12)], fps=2, audio=tone(1, 6.0))
    video = decoder.video(path, name=path.name)
    assert video.duration == pytest.approx(6.0, abs=0.05)
    assert len(video.frames) == 6 and video.frames.shape[-1] == 3
    assert list(video.times) == pytest.approx([0, 1, 2, 3, 4, 5], abs=0.01)
    assert video.audio is not None and video.audio.duration == pytest.approx(6.0, abs=0.1)


def test_bytes_and_frame_cap(tmp_path: Path) -> None:
    path = write_video(tmp_path / "v.mp4", [make_image(i) for i in range(20)], fps=2)
    capped = MediaDecoder(max_frames=4)
    try:
        video = capped.video(path.read_bytes(), name="upload.mp4")
    finally:
        capped.close()
    assert len(video.frames) == 4 and video.audio is None
    assert list(video.times) == pytest.approx([0.0, 2.5, 5.0, 7.5], abs=0.01)


@pytest.mark.parametrize("gop", [4, 1000])
def test_far_apart_frames_are_the_frames_at_their_times(tmp_path: Path, gop: int) -> None:
    # A keyframe every 2 s: seeks land near each target. 1000: one keyframe, seeking cannot help.
    images = [make_image(i) for i in range(120)]
    path = write_video(tmp_path / "long.mp4", images, fps=2, gop=gop)
    spread = MediaDecoder(max_frames=3)
    try:
        video = spread.video(path, name="long.mp4")
    finally:
        spread.close()
    assert list(video.times) == pytest.approx([0.0, 20.0, 40.0]) and video.duration == pytest.approx(60.0)
    for frame, index in zip(video.frames, [0, 40, 80], strict=True):
        expected = np.asarray(images[index], dtype=np.float32)
        assert np.abs(frame.astype(np.float32) - expected).mean() < 2.0


def test_bad_media_is_reported_by_name(decoder: MediaDecoder, tmp_path: Path) -> None:
    good = write_video(tmp_path / "good.mp4", [make_image(i) for i in range(4)], fps=2, audio=tone(0, 2.0))
    wav = write_audio(tmp_path / "sound.wav", tone(0, 2.0))
    cases = {
        "corrupt.mp4": b"\x00\x00\x00\x18ftypmp42 definitely not a movie" * 20,
        "truncated.mp4": good.read_bytes()[: len(good.read_bytes()) // 3],
        "mislabelled.mp4": wav.read_bytes(),  # a wav with a video name: no video stream
        "image.mp4": image_bytes(1),
    }
    for name, data in cases.items():
        with pytest.raises(MediaDecodeError) as exc:
            decoder.video(data, name=name)
        assert name in str(exc.value) and "/tmp/mmsearch-" not in str(exc.value)
    for name, data in {
        "empty.wav": b"",
        "text.wav": b"hello, not audio",
        "image.ogg": image_bytes(2),
    }.items():
        with pytest.raises(MediaDecodeError, match=name.replace(".", r"\.")):
            decoder.audio(data, name=name)


def test_a_hanging_or_crashing_decoder_costs_one_file(decoder: MediaDecoder, tmp_path: Path) -> None:
    wav = write_audio(tmp_path / "ok.wav", tone(2, 1.0))
    with pytest.raises(MediaDecodeError, match=r"hang\.mp4: decoding took longer than 1 s"):
        decoder.runner.run("time:sleep", (60,), timeout=1, name="hang.mp4")
    assert decoder.audio(wav, name="ok.wav").duration == pytest.approx(1.0, abs=0.05)
    with pytest.raises(MediaDecodeError, match=r"crash\.mp4: decoder crashed \(killed by SIGABRT\)"):
        decoder.runner.run("os:abort", (), timeout=30, name="crash.mp4")
    assert decoder.audio(wav, name="ok.wav").duration == pytest.approx(1.0, abs=0.05)
