"""Container formats told from the bytes themselves, never from a name or FFmpeg's guess.

FFmpeg's format auto-detection also recognises playlists and reference lists (concat/ffconcat,
HLS, SDP, image sequences): inputs that name other files or URLs and make the decoder read them.
Untrusted media is therefore sniffed here against an allow-list of self-contained containers,
and the demuxer is then forced to the sniffed format (encoders.av_decode).
"""

from __future__ import annotations

import io
from enum import Enum
from typing import BinaryIO

from encoders.errors import MediaDecodeError


class Container(Enum):
    """An accepted container: (FFmpeg demuxer name, the name people know it by)."""

    WAV = ("wav", "WAV")
    FLAC = ("flac", "FLAC")
    OGG = ("ogg", "Ogg")
    MP3 = ("mp3", "MP3")
    MP4 = ("mov", "MP4/M4A/MOV")
    MATROSKA = ("matroska", "Matroska/WebM")
    AVI = ("avi", "AVI")

    @property
    def demuxer(self) -> str:
        return self.value[0]

    @property
    def label(self) -> str:
        return self.value[1]


# Every accepted container can carry audio; only these carry the video this service reads.
AUDIO_CONTAINERS = tuple(Container)
VIDEO_CONTAINERS = (Container.MP4, Container.MATROSKA, Container.AVI)

# Atoms a QuickTime file may open with when it has no leading `ftyp` (files before MP4).
_QUICKTIME_ATOMS = {b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip"}


def sniff(f: BinaryIO) -> Container | None:
    """The container `f` holds, judged from its first bytes, or None when it is none of the
    accepted ones. Reads from the start of `f` and leaves it at the start."""
    f.seek(0)
    head = f.read(16)
    try:
        if head[:3] == b"ID3":
            # An ID3v2 tag can front MP3 or FLAC; what follows the tag decides.
            f.seek(_id3_size(head))
            return Container.FLAC if f.read(4) == b"fLaC" else Container.MP3
        return _sniff_head(head)
    finally:
        f.seek(0)


def sniff_bytes(data: bytes) -> Container | None:
    return sniff(io.BytesIO(data))


def require(f: BinaryIO, allowed: tuple[Container, ...], *, kind: str) -> Container:
    """The sniffed container of `f`, or MediaDecodeError when it is not one of `allowed`. The
    message depends on nothing but `allowed`: it must not echo what a refused input refers to."""
    found = sniff(f)
    if found is None or found not in allowed:
        raise MediaDecodeError(f"not an accepted {kind} format (accepted: {accepted(allowed)})")
    return found


def accepted(allowed: tuple[Container, ...]) -> str:
    return ", ".join(c.label for c in allowed)


def _sniff_head(head: bytes) -> Container | None:
    riff, form = head[:4], head[8:12]
    if riff in (b"RIFF", b"RF64") and form == b"WAVE":
        return Container.WAV
    if riff == b"RIFF" and form == b"AVI ":
        return Container.AVI
    if head[:4] == b"fLaC":
        return Container.FLAC
    if head[:4] == b"OggS":
        return Container.OGG
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML; the demuxer checks the doctype is Matroska/WebM
        return Container.MATROSKA
    if head[4:8] in _QUICKTIME_ATOMS:
        return Container.MP4
    if _mpeg_audio_sync(head):
        return Container.MP3
    return None


def _id3_size(head: bytes) -> int:
    """Bytes taken by the ID3v2 tag that starts `head`: 10-byte header, a syncsafe size, and a
    10-byte footer when flagged."""
    size = 0
    for b in head[6:10]:
        size = (size << 7) | (b & 0x7F)
    footer = 10 if len(head) > 5 and head[5] & 0x10 else 0
    return 10 + size + footer


def _mpeg_audio_sync(head: bytes) -> bool:
    """An MPEG audio frame header: 11 sync bits, then version, layer, bitrate and sample rate
    fields that are not the reserved values (layer 0 is ADTS AAC, not accepted)."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version, layer = (head[1] >> 3) & 3, (head[1] >> 1) & 3
    bitrate, rate = head[2] >> 4, (head[2] >> 2) & 3
    return version != 1 and layer != 0 and bitrate != 0xF and rate != 3
