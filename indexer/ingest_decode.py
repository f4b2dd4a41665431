"""The decode stage: each file's bytes into what the towers take, in isolated worker processes.

Images, audio and video decode in the decoder's worker processes (encoders.workers), each call
under a time limit and a memory limit, behind caps on pixels, duration and frame size; a file
that hangs, crashes its worker, or breaks a cap is quarantined and the run goes on. Images come
back already fitted to the model's input (encoders.image_decode). Text is decoded and chunked
here: UTF-8 decoding and chunking are linear in the text's size, which is capped.

With `device_jpeg`, JPEGs skip the workers: their header is checked here (format, pixel cap)
and the encoder decodes them on the GPU in batches (encoders.pixel_batch).
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from encoders.decode import DecodedVideo, MediaDecoder
from encoders.embed import DecodedText, Embedder, decoded_bytes
from encoders.errors import EncoderError, MediaDecodeError
from encoders.image_decode import FittedImage, ImageTarget, fit
from encoders.modality import Modality
from indexer.ingest_work import Skip, Work
from indexer.sources import ItemStatus, Stage

_JPEG_MAGIC = b"\xff\xd8\xff"
# The worker function that decodes and fits an image ("module:function", run by the worker).
IMAGE_TARGET = "encoders.image_decode:decode_fit"
# Modes nvJPEG decodes to RGB; others (CMYK) go to a worker.
_DEVICE_MODES = ("RGB", "L")


@dataclass
class JpegImage:
    """A JPEG whose header passed the checks, to be decoded on the device."""

    data: bytes
    width: int
    height: int


class Decoders:
    """Decodes one Work at a time (called from several threads at once)."""

    def __init__(
        self,
        embedder: Embedder,
        decoder: MediaDecoder,
        target: ImageTarget,
        *,
        image_timeout: float,
        device_jpeg: bool = False,
    ) -> None:
        self.embedder = embedder
        self.decoder = decoder
        self.target = target
        self.image_timeout = image_timeout
        self.device_jpeg = device_jpeg and target.fits
        self.image_target = IMAGE_TARGET

    def decode(self, w: Work) -> None:
        """Set w.decoded, w.units and w.held. Raises Skip for a file that cannot be decoded."""
        modality = w.src.modality
        try:
            if modality == Modality.TEXT:
                self._text(w)
            elif modality == Modality.IMAGE:
                self._image(w)
            elif modality == Modality.AUDIO:
                if not self.embedder.encoder.has_audio:
                    # Not the file's fault: every audio file fails alike, so it is not quarantined.
                    raise Skip(ItemStatus.FAILED, Stage.EMBED, self._no_audio())
                w.decoded = self.decoder.audio(w.src.path or w.data or b"", name=w.src.source)
                cfg = self.embedder.encoder.require_audio().cfg
                w.units = max(1, int(w.decoded.duration / cfg.hop_seconds))
            else:
                w.decoded = self._fit_frames(
                    self.decoder.video(w.src.path or w.data or b"", name=w.src.source)
                )
                w.units = len(w.decoded.frames)
        except MediaDecodeError as exc:
            raise Skip(ItemStatus.QUARANTINED, Stage.DECODE, _unnamed(str(exc), w.src.source)) from None
        w.data = None  # a JpegImage keeps its own reference to the bytes
        w.held = (
            decoded_bytes(w.decoded)
            if not isinstance(w.decoded, FittedImage | JpegImage)
            else _image_bytes(w)
        )

    def decode_in_worker(self, w: Work, data: bytes) -> None:
        """Decode an image in a worker (a JPEG the device could not decode)."""
        try:
            w.decoded = self._fit_in_worker(data, w.src.source)
        except MediaDecodeError as exc:
            raise Skip(ItemStatus.QUARANTINED, Stage.DECODE, _unnamed(str(exc), w.src.source)) from None

    def _fit_frames(self, video: DecodedVideo) -> DecodedVideo:
        """Frames fitted to the model input here, on a decode thread (Pillow runs without the
        GIL): the encoder's own preprocessing then has nothing left to resize, and its result is
        the same (the same Pillow calls)."""
        if not self.target.fits or not len(video.frames):
            return video
        fitted = [np.asarray(fit(Image.fromarray(f), self.target)) for f in video.frames]
        return replace(video, frames=np.stack(fitted))

    def _text(self, w: Work) -> None:
        if w.src.text is not None:
            text = w.src.text
        else:
            try:
                text = (w.data or b"").decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise MediaDecodeError(f"not valid UTF-8 text ({exc.reason} at byte {exc.start})") from None
        if not text.strip():
            raise MediaDecodeError("text is empty")
        chunks = self.embedder.encoder.chunk(text)
        w.decoded, w.units = DecodedText(chunks), len(chunks)

    def _image(self, w: Work) -> None:
        data = w.data or b""
        if self.device_jpeg and data.startswith(_JPEG_MAGIC):
            probed = self._probe_jpeg(data)
            if probed is not None:
                w.decoded = probed
                return
        w.decoded = self._fit_in_worker(data, w.src.source)

    def _fit_in_worker(self, data: bytes, name: str) -> FittedImage:
        fitted: FittedImage = self.decoder.runner.run(
            self.image_target,
            (pickle.PickleBuffer(data), self.target),
            timeout=self.image_timeout,
            name=name,
        )
        return fitted

    def _probe_jpeg(self, data: bytes) -> JpegImage | None:
        """The header alone (no pixels are decoded here): a JPEG the device can take, or None to
        decode it in a worker (which also reports what is wrong with a bad one)."""
        try:
            with Image.open(io.BytesIO(data), formats=("JPEG",)) as img:
                width, height = img.size
                mode = img.mode
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
            return None
        if width * height > self.target.max_pixels or mode not in _DEVICE_MODES:
            return None
        return JpegImage(data, width, height)

    def _no_audio(self) -> str:
        try:
            self.embedder.encoder.require_audio()
        except EncoderError as exc:  # the encoder's own message names the bundle and what to do
            return str(exc)
        return "the bundle has no audio tower"


def _image_bytes(w: Work) -> int:
    if isinstance(w.decoded, FittedImage):
        return int(w.decoded.pixels.nbytes)
    if isinstance(w.decoded, JpegImage):
        return w.decoded.width * w.decoded.height * 3
    return 0


def _unnamed(message: str, name: str) -> str:
    """A decoder message without the leading file name: the report names the file already."""
    prefix = f"{name}: "
    return message[len(prefix) :] if message.startswith(prefix) else message
