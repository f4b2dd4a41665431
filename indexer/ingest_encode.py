"""The encode stage: decoded items of many files through the towers together, into point records.

Runs in the one process that owns the model. Fitted images from the workers go through the image
tower in large uint8 batches (encoders.pixel_batch: pinned memory, non-blocking copies, autocast
on CUDA); JPEGs marked for the device are decoded there first; text, audio, video and images
the workers could not fit go through the Embedder's own batched path. A forward pass that fails
is retried item by item, so one bad item fails alone.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from encoders.decode import DecodedAudio, DecodedVideo
from encoders.embed import Decoded, DecodedImage, DecodedText, Embedder, Embedding, Failure, ImageEmbedding
from encoders.errors import EncoderError
from encoders.image_decode import FittedImage
from encoders.pixel_batch import PixelEncoder
from indexer.ingest_decode import JpegImage
from indexer.ingest_work import Action, Skip, Work
from indexer.media_points import item_points
from indexer.schema import Key, PointRecord
from indexer.sources import ItemResult, ItemStatus, Stage

log = logging.getLogger(__name__)
# What a failed forward pass raises (torch errors are RuntimeErrors, CUDA OOM included).
_FORWARD_ERRORS = (RuntimeError, ValueError, MemoryError, EncoderError)


class BatchEncoder:
    def __init__(
        self,
        embedder: Embedder,
        pixels: PixelEncoder,
        namespace: str,
        *,
        batch_size: int,
        max_payload_bytes: int | None = None,
        redecode: Callable[[Work, bytes], None] | None = None,
    ) -> None:
        self.embedder = embedder
        self.pixels = pixels
        self.namespace = namespace
        self.batch_size = batch_size
        self.max_payload_bytes = max_payload_bytes
        self.redecode = redecode

    def encode(self, batch: Sequence[Work]) -> None:
        """Embed every item of `batch` and build its records (action WRITE), or finish it as
        failed."""
        self._device_jpegs([w for w in batch if isinstance(w.decoded, JpegImage)])
        fitted = [w for w in batch if isinstance(w.decoded, FittedImage) and w.decoded.fitted]
        on_device = [w for w in batch if isinstance(w.decoded, _DeviceImage)]
        taken = {id(w) for w in fitted + on_device}
        rest = [w for w in batch if w.result is None and id(w) not in taken]
        self._isolated(fitted, self._embed_fitted)
        self._isolated(on_device, self._embed_on_device)
        self._isolated(rest, self._embed_rest)

    # -- the three paths ------------------------------------------------------------------

    def _embed_fitted(self, works: Sequence[Work]) -> list[Embedding | Failure]:
        out: list[Embedding | Failure] = []
        for start in range(0, len(works), self.batch_size):
            part = works[start : start + self.batch_size]
            vectors = self.pixels.embed_fitted([w.decoded.pixels for w in part])
            out += [
                ImageEmbedding(v, w.decoded.width, w.decoded.height)
                for v, w in zip(vectors, part, strict=True)
            ]
        return out

    def _embed_on_device(self, works: Sequence[Work]) -> list[Embedding | Failure]:
        out: list[Embedding | Failure] = []
        for start in range(0, len(works), self.batch_size):
            part = works[start : start + self.batch_size]
            vectors = self.pixels.embed_tensors([w.decoded.tensor for w in part])
            out += [
                ImageEmbedding(v, w.decoded.width, w.decoded.height)
                for v, w in zip(vectors, part, strict=True)
            ]
        return out

    def _embed_rest(self, works: Sequence[Work]) -> list[Embedding | Failure]:
        decoded: list[Decoded | Failure] = [_as_embedder_input(w.decoded) for w in works]
        embedded = self.embedder.embed_decoded(decoded)
        for i, w in enumerate(works):  # an unfitted image: record the original size
            emb = embedded[i]
            if isinstance(w.decoded, FittedImage) and isinstance(emb, ImageEmbedding):
                embedded[i] = ImageEmbedding(emb.pooled, w.decoded.width, w.decoded.height)
        return embedded

    def _device_jpegs(self, works: Sequence[Work]) -> None:
        """Decode JPEGs on the device; one it cannot decode goes to a worker instead."""
        if not works:
            return
        tensors = self.pixels.decode_jpegs([w.decoded.data for w in works])
        for w, t in zip(works, tensors, strict=True):
            jpeg: JpegImage = w.decoded
            if t is not None:
                w.decoded = _DeviceImage(t, jpeg.width, jpeg.height)
                continue
            if self.redecode is None:
                w.finish(ItemResult(ItemStatus.QUARANTINED, "not a JPEG the device can decode", Stage.DECODE))
                continue
            try:
                self.redecode(w, jpeg.data)
            except Skip as skip:
                w.finish(skip.result)

    # -- isolation and records ------------------------------------------------------------

    def _isolated(
        self, works: Sequence[Work], embed: Callable[[Sequence[Work]], list[Embedding | Failure]]
    ) -> None:
        if not works:
            return
        try:
            embedded = embed(works)
        except _FORWARD_ERRORS as exc:
            if len(works) == 1:
                log.warning("embedding %s failed: %s", works[0].src.source, exc)
                works[0].finish(ItemResult(ItemStatus.FAILED, f"embedding failed: {exc}", Stage.EMBED))
                return
            for w in works:  # find the item that breaks the batch; the others go on
                self._isolated([w], embed)
            return
        for w, emb in zip(works, embedded, strict=True):
            if isinstance(emb, Failure):
                w.finish(ItemResult(ItemStatus.FAILED, emb.error, Stage.EMBED))
            else:
                w.embedding, w.decoded = emb, None

    def records(self, w: Work) -> None:
        """Turn an embedded item into its point records (action WRITE), or finish it as failed.
        Runs on the writer's thread: building payloads is Python work the model need not wait on."""
        emb, w.embedding = w.embedding, None
        assert w.base is not None and emb is not None  # identified before decoding, then embedded
        records, note = item_points(w.key, w.base, emb, self.namespace)
        ids = [r.id for r in records]
        sentinel = next(r for r in records if r.id == w.sentinel)
        # The sentinel lists every point of the media (a re-ingest needs no scan), and is
        # written last: a write cut short never leaves a sentinel without its points.
        sentinel.payload[Key.POINT_IDS] = ids
        records = [r for r in records if r is not sentinel] + [sentinel]
        if (error := self._payload_too_large(w, records)) is not None:
            w.finish(ItemResult(ItemStatus.FAILED, error, Stage.WRITE))
            return
        w.records = records
        result = ItemResult(ItemStatus.INDEXED, note, None, len(ids), tuple(ids), w.base.media_id)
        w.finish(result, Action.WRITE)

    def _payload_too_large(self, w: Work, records: list[PointRecord]) -> str | None:
        # The metadata is repeated on every point (every chunk of a long text): bound the product.
        if self.max_payload_bytes is None or w.base is None:
            return None
        meta = len(json.dumps(w.base.meta))
        total = meta * len(records)
        if total <= self.max_payload_bytes:
            return None
        return (
            f"its {meta}-byte metadata is stored on each of its {len(records)} points, {total} bytes in "
            f"all; at most {self.max_payload_bytes} (max_item_payload_bytes)"
        )


class _DeviceImage:
    """A JPEG decoded on the device, waiting for the image tower."""

    def __init__(self, tensor: object, width: int, height: int) -> None:
        self.tensor = tensor
        self.width = width
        self.height = height


def _as_embedder_input(decoded: Any) -> Decoded:
    if isinstance(decoded, FittedImage):
        return DecodedImage(Image.fromarray(np.ascontiguousarray(decoded.pixels)))
    if not isinstance(decoded, DecodedText | DecodedAudio | DecodedVideo | DecodedImage):
        raise TypeError(f"not a decoded input: {type(decoded).__name__}")
    return decoded
