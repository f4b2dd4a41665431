"""The query path's encoder: each tower's forward pass shared by concurrent calls, and text
query vectors cached.

:class:`BatchedEncoder` is an :class:`encoders.encoder.Encoder` whose ``embed_texts``,
``embed_images`` and ``embed_audio_clips`` go through one :class:`MicroBatcher` per modality, so
an :class:`encoders.embed.Embedder` built on it decodes, chunks, windows and pools exactly as
everywhere else, and only the forward passes are shared. Images are preprocessed on the caller's
thread (in parallel); only the tower runs in the batch.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from encoders.encoder import Encoder
from server.batching import BatchHook, Load, MicroBatcher

I = TypeVar("I")  # noqa: E741 - a batch item


class TextCache:
    """Least-recently-used text -> vector, keyed by (bundle id, text): a vector is only ever
    served in the space that produced it. Thread-safe; `max_entries` 0 disables it."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, bundle_id: str, text: str) -> np.ndarray | None:
        if not self.max_entries:
            return None
        key = (bundle_id, text)
        with self._lock:
            vector = self._entries.get(key)
            if vector is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return vector

    def put(self, bundle_id: str, text: str, vector: np.ndarray) -> None:
        if not self.max_entries:
            return
        frozen = np.array(vector, dtype=np.float32)  # a private, read-only copy: callers share it
        frozen.flags.writeable = False
        with self._lock:
            self._entries[(bundle_id, text)] = frozen
            self._entries.move_to_end((bundle_id, text))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


class BatchedEncoder(Encoder):
    """An Encoder over `base`'s bundle whose forward passes are micro-batched across threads."""

    def __init__(
        self,
        base: Encoder,
        *,
        max_batch: int,
        max_wait: float,
        load: Load | None = None,
        cache: TextCache | None = None,
        hooks: dict[str, BatchHook] | None = None,
        on_cache: Callable[[int, int], None] | None = None,
    ) -> None:
        super().__init__(base.bundle, base.batch_size)
        self._token_cache = base._token_cache  # the same tokenizer: share its word counts
        # Beside the store's GIL-holding queries, an eager text pass waits for the GIL at every op.
        self.script_text_tower()
        self.cache = cache
        self.on_cache = on_cache  # (hits, misses) of each lookup
        hooks = hooks or {}

        def batcher(fn: Callable[[list[I]], Sequence[np.ndarray]], kind: str) -> MicroBatcher[I, np.ndarray]:
            return MicroBatcher(
                fn, max_batch=max_batch, max_wait=max_wait, load=load, on_batch=hooks.get(kind)
            )

        self._texts: MicroBatcher[str, np.ndarray] = batcher(self._text_rows, "text")
        self._pixels: MicroBatcher[torch.Tensor, np.ndarray] = batcher(self._pixel_rows, "image")
        self._clips: MicroBatcher[np.ndarray, np.ndarray] = batcher(self._clip_rows, "audio")

    # -- what the Embedder calls ------------------------------------------------------------

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        bundle_id = self.bundle.bundle_id
        rows: list[np.ndarray | None] = [
            self.cache.get(bundle_id, t) if self.cache is not None else None for t in texts
        ]
        missing = list(dict.fromkeys(t for t, r in zip(texts, rows, strict=True) if r is None))
        if self.cache is not None and self.on_cache is not None:
            hits = sum(r is not None for r in rows)
            self.on_cache(hits, len(texts) - hits)
        if missing:
            fresh = dict(zip(missing, self._texts.run(missing), strict=True))
            if self.cache is not None:
                for text, vector in fresh.items():
                    self.cache.put(bundle_id, text, vector)
            rows = [r if r is not None else fresh[t] for t, r in zip(texts, rows, strict=True)]
        return _stack([r for r in rows if r is not None], self.dim)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        pixels = self.preprocess_images(images) if images else torch.zeros(0)
        return _stack(self._pixels.run(list(pixels)), self.dim)

    def embed_audio_clips(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        self.require_audio()  # the error names the bundle, before any caller waits on a batch
        return _stack(self._clips.run(list(clips)), self.dim)

    # -- what one batch runs ------------------------------------------------------------------

    def _text_rows(self, texts: list[str]) -> list[np.ndarray]:
        return list(Encoder.embed_texts(self, texts))

    def _pixel_rows(self, pixels: list[torch.Tensor]) -> list[np.ndarray]:
        return list(self.embed_pixels(torch.stack(pixels)))

    def _clip_rows(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        return list(Encoder.embed_audio_clips(self, clips))


def _stack(rows: Sequence[np.ndarray], dim: int) -> np.ndarray:
    if not rows:
        return np.zeros((0, dim), dtype=np.float32)
    return np.stack(rows).astype(np.float32, copy=False)
