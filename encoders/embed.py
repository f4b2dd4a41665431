"""The one embedding path: typed inputs of any modality -> decoded -> vectors in the shared space.

The query path, ingest, the trainer's data and evaluation all go through :class:`Embedder`, so a
long text is chunked, an audio clip windowed and a video sampled the same way everywhere. A batch
of mixed inputs is embedded with one forward pass per tower where it can be (every text chunk
together, every image and video frame together, every audio window of equal length together).
Each input succeeds or fails on its own: a failure is a :class:`Failure` in its slot, the rest of
the batch goes on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar

import numpy as np
from PIL import Image

from encoders.audio import window_bounds
from encoders.decode import DecodedAudio, DecodedVideo, MediaDecoder
from encoders.encoder import Encoder
from encoders.errors import EncoderError, MediaDecodeError
from encoders.inputs import AudioInput, EmbedInput, ImageInput, TextInput, VideoInput
from encoders.media import decode_image
from encoders.modality import Modality
from encoders.text import TextChunk
from encoders.vectors import mean_unit

# Called between the steps of a batch; raises to abandon the work (a passed deadline, a
# cancelled call). The encoder layer knows nothing of gRPC: the caller decides what to raise.
Check = Callable[[], None]
# Seconds the caller has left (None: no deadline); decodes in a worker are stopped then.
TimeLeft = Callable[[], float | None]
T = TypeVar("T")
# Inputs per forward call between two checks: a batch of many long texts still stops promptly.
CHECK_EVERY = 256
# Bytes of decoded media (pixels, samples) one embed call holds before it embeds and lets them go.
DECODED_BUDGET = 512 * 1024 * 1024
# Under this much sound (a video segment's tail) there is nothing to embed.
MIN_AUDIO_SECONDS = 0.1


@dataclass(frozen=True)
class Failure:
    """Why one input could not be embedded; the message names the input."""

    error: str


@dataclass
class DecodedText:
    modality: ClassVar[Modality] = Modality.TEXT
    chunks: list[TextChunk]


@dataclass
class DecodedImage:
    modality: ClassVar[Modality] = Modality.IMAGE
    image: Image.Image


Decoded = DecodedText | DecodedImage | DecodedAudio | DecodedVideo


def decoded_bytes(decoded: Decoded | Failure) -> int:
    """About how much memory a decoded input holds."""
    if isinstance(decoded, DecodedImage):
        width, height = decoded.image.size
        return width * height * 3
    if isinstance(decoded, DecodedAudio):
        return int(decoded.samples.nbytes)
    if isinstance(decoded, DecodedVideo):
        return int(decoded.frames.nbytes) + (int(decoded.audio.samples.nbytes) if decoded.audio else 0)
    if isinstance(decoded, DecodedText):
        return sum(len(c.text) for c in decoded.chunks)
    return 0


def modality_of(decoded: Decoded) -> Modality:
    if isinstance(decoded, DecodedAudio):
        return Modality.AUDIO
    if isinstance(decoded, DecodedVideo):
        return Modality.VIDEO
    return decoded.modality


@dataclass
class TextEmbedding:
    modality: ClassVar[Modality] = Modality.TEXT
    chunks: list[TextChunk]
    vectors: np.ndarray  # (n_chunks, dim)
    pooled: np.ndarray  # mean of the chunks: a long text is not silently truncated


@dataclass
class ImageEmbedding:
    modality: ClassVar[Modality] = Modality.IMAGE
    pooled: np.ndarray
    width: int
    height: int


@dataclass
class AudioEmbedding:
    """A clip's window vectors (one per overlapping window of the tower) and their mean."""

    modality: ClassVar[Modality] = Modality.AUDIO
    windows: list[tuple[float, float]]  # (start, end) seconds
    vectors: np.ndarray  # (n_windows, dim)
    pooled: np.ndarray
    duration: float


@dataclass
class VideoEmbedding:
    """Frame vectors with their times, their mean, and the audio track cut into the same
    segments (plus its pooled vector) when there is one and the bundle can embed it."""

    modality: ClassVar[Modality] = Modality.VIDEO
    frame_vectors: np.ndarray  # (n_frames, dim)
    frame_times: np.ndarray  # seconds
    duration: float
    pooled: np.ndarray
    segment_seconds: float
    audio_segments: list[tuple[int, float, float]]  # (segment index, start, end) with sound
    audio_vectors: np.ndarray  # (len(audio_segments), dim)
    audio_pooled: np.ndarray | None
    note: str | None = None  # why the audio track is missing, when it is


Embedding = TextEmbedding | ImageEmbedding | AudioEmbedding | VideoEmbedding


class Embedder:
    """Decodes and embeds inputs of every modality with one bundle's towers."""

    def __init__(
        self,
        encoder: Encoder,
        decoder: MediaDecoder | None = None,
        *,
        segment_seconds: float = 5.0,
        decoded_budget: int = DECODED_BUDGET,
    ) -> None:
        if not (math.isfinite(segment_seconds) and segment_seconds > 0):
            raise ValueError("segment_seconds must be a positive number")
        self.encoder = encoder
        self.decoder = decoder or MediaDecoder(sample_rate=encoder.decode_sample_rate)
        self.segment_seconds = segment_seconds
        self.decoded_budget = decoded_budget

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def close(self) -> None:
        self.decoder.close()

    # -- entry points ---------------------------------------------------------------------

    def embed(
        self,
        inputs: Sequence[EmbedInput],
        *,
        check: Check | None = None,
        time_left: TimeLeft | None = None,
        video_audio: bool = True,
    ) -> list[Embedding | Failure]:
        """Decode and embed a batch of mixed inputs. `video_audio=False` skips a video's audio
        track (a query needs only the pooled visual vector)."""
        out: list[Embedding | Failure] = []
        group: list[Decoded | Failure] = []
        held = 0
        window = max(1, self.decoder.workers)
        # Decoded media are held to a budget: a request of many small files that decode to huge
        # ones (flat 64-megapixel PNGs, hours of compressed silence) is embedded in groups and
        # released group by group, instead of all of it sitting in memory at once.
        with ThreadPoolExecutor(max_workers=window) as pool:
            for start in range(0, len(inputs), window):
                for d in self._decode(inputs[start : start + window], check, pool, time_left):
                    group.append(d)
                    held += decoded_bytes(d)
                if held >= self.decoded_budget:
                    out += self.embed_decoded(group, check=check, video_audio=video_audio)
                    group, held = [], 0
        if group:
            out += self.embed_decoded(group, check=check, video_audio=video_audio)
        return out

    def decode(self, inputs: Sequence[EmbedInput], *, check: Check | None = None) -> list[Decoded | Failure]:
        """Text is chunked here, images decoded here, audio and video in the decoder's worker
        processes, in parallel."""
        with ThreadPoolExecutor(max_workers=max(1, self.decoder.workers)) as pool:
            return self._decode(inputs, check, pool)

    def _decode(
        self,
        inputs: Sequence[EmbedInput],
        check: Check | None,
        pool: ThreadPoolExecutor,
        time_left: TimeLeft | None = None,
    ) -> list[Decoded | Failure]:
        def one(item: EmbedInput) -> Decoded | Failure:
            if check is not None:
                check()
            try:
                return self._decode_one(item, time_left() if time_left is not None else None)
            except (MediaDecodeError, EncoderError) as exc:
                return Failure(str(exc))
            except OSError as exc:
                return Failure(f"{item.name}: cannot read file: {exc.strerror or exc}")

        if len(inputs) <= 1:
            return [one(i) for i in inputs]
        return list(pool.map(one, inputs))

    def embed_decoded(
        self, decoded: Sequence[Decoded | Failure], *, check: Check | None = None, video_audio: bool = True
    ) -> list[Embedding | Failure]:
        out: list[Embedding | Failure | None] = [d if isinstance(d, Failure) else None for d in decoded]

        def step() -> None:
            if check is not None:
                check()

        texts = [(i, t) for i, t in enumerate(decoded) if isinstance(t, DecodedText)]
        if texts:
            step()
            flat = _in_slices(self.encoder.embed_texts, [c.text for _, t in texts for c in t.chunks], step)
            parts = _split(flat, [len(t.chunks) for _, t in texts])
            for (i, t), vecs in zip(texts, parts, strict=True):
                out[i] = TextEmbedding(t.chunks, vecs, mean_unit(vecs))
        # Images and video frames share the image tower: one pass over all of them.
        images = [(i, d) for i, d in enumerate(decoded) if isinstance(d, DecodedImage)]
        videos = [(i, d) for i, d in enumerate(decoded) if isinstance(d, DecodedVideo)]
        if images or videos:
            step()
            pictures = [im.image for _, im in images] + [
                Image.fromarray(f) for _, v in videos for f in v.frames
            ]
            flat = _in_slices(self.encoder.embed_images, pictures, step)
            for k, (i, im) in enumerate(images):
                out[i] = ImageEmbedding(flat[k], im.image.size[0], im.image.size[1])
            frame_parts = _split(flat[len(images) :], [len(v.frames) for _, v in videos])
            for (i, v), vecs in zip(videos, frame_parts, strict=True):
                out[i] = self._video(v, vecs, video_audio, step)
        for i, a in enumerate(decoded):
            if isinstance(a, DecodedAudio):
                step()
                out[i] = self.embed_samples(a.samples)
        return [o if o is not None else Failure("nothing was decoded") for o in out]

    def embed_samples(self, samples: np.ndarray) -> AudioEmbedding:
        """A mono clip at the tower's rate: one vector per overlapping window, and their mean."""
        cfg = self.encoder.require_audio().cfg
        bounds = window_bounds(len(samples), cfg)
        vectors = self.encoder.embed_audio_clips([samples[a:b] for a, b in bounds])
        windows = [(a / cfg.sample_rate, b / cfg.sample_rate) for a, b in bounds]
        return AudioEmbedding(windows, vectors, mean_unit(vectors), len(samples) / cfg.sample_rate)

    # -- steps ----------------------------------------------------------------------------

    def _decode_one(self, item: EmbedInput, time_left: float | None = None) -> Decoded:
        if isinstance(item, TextInput):
            if not item.text.strip():
                raise MediaDecodeError(f"{item.name}: text is empty")
            return DecodedText(self.encoder.chunk(item.text))
        if isinstance(item, ImageInput):
            data = item.data.read_bytes() if isinstance(item.data, Path) else item.data
            return DecodedImage(decode_image(data, name=item.name))
        if isinstance(item, AudioInput):
            self.encoder.require_audio()  # no tower: no point in decoding
            return self.decoder.audio(item.data, name=item.name, time_left=time_left)
        if isinstance(item, VideoInput):
            return self.decoder.video(item.data, name=item.name, time_left=time_left)
        raise TypeError(f"not an embedding input: {type(item).__name__}")

    def _video(
        self, video: DecodedVideo, frames: np.ndarray, with_audio: bool, step: Callable[[], None]
    ) -> VideoEmbedding:
        seg = self.segment_seconds
        emb = VideoEmbedding(
            frame_vectors=frames,
            frame_times=video.times,
            duration=video.duration,
            pooled=mean_unit(frames),
            segment_seconds=seg,
            audio_segments=[],
            audio_vectors=np.zeros((0, self.dim), dtype=np.float32),
            audio_pooled=None,
        )
        if not with_audio:
            return emb
        if video.audio is None:
            emb.note = "no audio track"
            return emb
        if not self.encoder.has_audio:
            emb.note = "bundle has no audio tower; audio track not indexed"
            return emb
        step()
        samples, rate = video.audio.samples, video.audio.sample_rate
        clips = []
        for k in range(max(1, math.ceil(video.duration / seg))):
            t0, t1 = k * seg, min((k + 1) * seg, video.duration)
            clip = samples[int(t0 * rate) : int(t1 * rate)]
            if len(clip) >= rate * MIN_AUDIO_SECONDS:
                clips.append(clip)
                emb.audio_segments.append((k, t0, t1))
        if clips:
            emb.audio_vectors = self.encoder.embed_audio_clips(clips)
        emb.audio_pooled = self.embed_samples(samples).pooled
        return emb


def _split(rows: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Consecutive row blocks of the given sizes (one block per size, none for no sizes)."""
    ends = np.cumsum(sizes)
    return [rows[end - n : end] for n, end in zip(sizes, ends, strict=True)]


def _in_slices(
    embed: Callable[[list[T]], np.ndarray], items: list[T], step: Callable[[], None]
) -> np.ndarray:
    """`embed` over `items` in slices of CHECK_EVERY, calling `step` between slices."""
    parts = []
    for start in range(0, len(items), CHECK_EVERY):
        if start:
            step()
        parts.append(embed(items[start : start + CHECK_EVERY]))
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
