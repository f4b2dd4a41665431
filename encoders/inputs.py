"""Typed inputs of the one embedding path: what to embed, per modality. Torch-free.

Media arrive as bytes (from a client) or as a Path (only ever one the operator named, by ingest
of a local folder). `name` is how errors refer to the input: a file path, or a request field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from encoders.modality import Modality


@dataclass(frozen=True)
class TextInput:
    modality: ClassVar[Modality] = Modality.TEXT
    text: str
    name: str = "text"


@dataclass(frozen=True)
class ImageInput:
    modality: ClassVar[Modality] = Modality.IMAGE
    data: bytes | Path
    name: str = "image"


@dataclass(frozen=True)
class AudioInput:
    modality: ClassVar[Modality] = Modality.AUDIO
    data: bytes | Path
    name: str = "audio"


@dataclass(frozen=True)
class VideoInput:
    modality: ClassVar[Modality] = Modality.VIDEO
    data: bytes | Path
    name: str = "video"


EmbedInput = TextInput | ImageInput | AudioInput | VideoInput


def input_for(modality: Modality, data: bytes | str | Path, name: str) -> EmbedInput:
    """The typed input for `modality`. Raises TypeError when `data` is of the wrong kind (text
    for media, bytes for text), naming the input."""
    if modality == Modality.TEXT:
        if not isinstance(data, str):
            raise TypeError(f"{name}: text item carries bytes, expected a string")
        return TextInput(data, name)
    if isinstance(data, str):
        raise TypeError(f"{name}: {modality} item carries text, expected encoded {modality} bytes")
    if modality == Modality.IMAGE:
        return ImageInput(data, name)
    if modality == Modality.AUDIO:
        return AudioInput(data, name)
    return VideoInput(data, name)
