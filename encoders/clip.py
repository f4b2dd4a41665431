"""Image and text towers of a bundle: batched, device-aware, float32 L2-normalised outputs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from encoders.bundle import ModelBundle
from encoders.text import TextChunk, chunk_text


class ClipEncoder:
    """Embeds images and texts with one bundle's open_clip towers."""

    def __init__(self, bundle: ModelBundle, batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.bundle = bundle
        self.batch_size = batch_size
        self._cuda = bundle.device.type == "cuda"
        # Two tokens of the context are the start and end markers.
        self.max_chunk_tokens = bundle.context_length - 2
        self._token_cache: dict[str, int] = {}

    @property
    def dim(self) -> int:
        return self.bundle.embed_dim

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, dim) float32, unit-norm rows."""
        out = [
            self._forward_images(images[i : i + self.batch_size])
            for i in range(0, len(images), self.batch_size)
        ]
        return self._stack(out)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, unit-norm rows. Texts longer than the context are truncated by the
        tokenizer: callers that must keep every word use :meth:`chunk` first."""
        out = [
            self._forward_texts(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)
        ]
        return self._stack(out)

    def chunk(self, text: str) -> list[TextChunk]:
        """Overlapping chunks of `text`, each within the text tower's context."""
        return chunk_text(
            text,
            self.count_tokens,
            max_tokens=self.max_chunk_tokens,
            overlap_tokens=self.max_chunk_tokens // 4,
        )

    def count_tokens(self, word: str) -> int:
        cached = self._token_cache.get(word)
        if cached is None:
            tok = self.bundle.tokenizer
            if hasattr(tok, "encode"):
                cached = len(tok.encode(word))
            else:  # open_clip's HFTokenizer wraps a transformers tokenizer
                cached = len(tok.tokenizer.encode(word, add_special_tokens=False))
            if len(self._token_cache) < 100_000:
                self._token_cache[word] = cached
        return cached

    def _forward_images(self, batch: Sequence[Image.Image]) -> torch.Tensor:
        pixels = torch.stack([self.bundle.preprocess(img) for img in batch])
        with self._inference():
            feats = self.bundle.model.encode_image(self._to_device(pixels))  # type: ignore[operator]
        return feats

    def _forward_texts(self, batch: Sequence[str]) -> torch.Tensor:
        tokens = self.bundle.tokenizer(list(batch))
        with self._inference():
            feats = self.bundle.model.encode_text(self._to_device(tokens))  # type: ignore[operator]
        return feats

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self._cuda:
            # Pinned host memory lets the copy overlap with compute.
            return t.pin_memory().to(self.bundle.device, non_blocking=True)
        return t

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        with torch.inference_mode():
            if self._cuda:
                dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
                with torch.autocast("cuda", dtype=dtype):
                    yield
            else:
                yield

    @staticmethod
    def _stack(parts: list[torch.Tensor]) -> np.ndarray:
        if not parts:
            return np.zeros((0, 0), dtype=np.float32)
        feats = torch.cat(parts).float()
        # Normalise in float32 after autocast so stored vectors are unit-norm to float precision.
        feats = torch.nn.functional.normalize(feats, dim=-1)
        return feats.cpu().numpy().astype(np.float32, copy=False)
