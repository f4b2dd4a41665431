"""Turning manifest items into model inputs, decoded once and cached for the run."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from encoders.bundle import ModelBundle
from encoders.decode import MediaDecoder
from encoders.errors import MediaDecodeError
from encoders.media import decode_image
from encoders.modality import Modality
from trainer.manifest import ItemRef


@dataclass
class Decoded:
    """One item ready for its tower: pixels, tokens, samples, or video frames."""

    ref: ItemRef
    image: Image.Image | None = None  # decoded RGB; preprocessed (and augmented) per step
    tokens: torch.Tensor | None = None  # (context,)
    samples: np.ndarray | None = None  # mono float32 at the audio tower's rate
    frames: list[Image.Image] | None = None


class ItemCache:
    """Decodes each item once (audio and video in the isolated decoder workers)."""

    def __init__(self, bundle: ModelBundle, decoder: MediaDecoder) -> None:
        self.bundle = bundle
        self.decoder = decoder
        self._items: dict[str, Decoded] = {}
        self.failures: dict[str, str] = {}

    def get(self, ref: ItemRef) -> Decoded:
        return self._items[ref.key]

    def __contains__(self, ref: ItemRef) -> bool:
        return ref.key in self._items

    def load(self, refs: Iterable[ItemRef]) -> None:
        """Decode every item not decoded yet; failures are recorded in `failures`, not raised."""
        todo = {r.key: r for r in refs if r.key not in self._items and r.key not in self.failures}
        texts = [r for r in todo.values() if r.modality == Modality.TEXT]
        if texts:
            tokens = self.bundle.tokenizer([r.text for r in texts])
            for r, t in zip(texts, tokens, strict=True):
                self._items[r.key] = Decoded(r, tokens=t)
        media = [r for r in todo.values() if r.modality != Modality.TEXT]
        with ThreadPoolExecutor(max_workers=self.decoder.workers) as pool:
            for ref, result in zip(media, pool.map(self._decode, media), strict=True):
                if isinstance(result, str):
                    self.failures[ref.key] = result
                else:
                    self._items[ref.key] = result

    def _decode(self, ref: ItemRef) -> Decoded | str:
        assert ref.path is not None
        name = str(ref.path)
        try:
            if ref.modality == Modality.IMAGE:
                return Decoded(ref, image=decode_image(ref.path.read_bytes(), name=name))
            if ref.modality == Modality.AUDIO:
                return Decoded(ref, samples=self.decoder.audio(ref.path, name=name).samples)
            video = self.decoder.video(ref.path, name=name)
            return Decoded(ref, frames=[Image.fromarray(f) for f in video.frames])
        except (MediaDecodeError, OSError) as exc:
            return str(exc)
