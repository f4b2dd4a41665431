"""A bundle's towers as batched, device-aware forward passes: float32 L2-normalised outputs.

Decoding and the dispatch per modality live in encoders.embed; this is the layer under it."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from open_clip.model import CLIP
from open_clip.transformer import text_global_pool
from PIL import Image

from encoders.audio import AudioTower
from encoders.bundle import ModelBundle
from encoders.errors import EncoderError
from encoders.text import TextChunk, chunk_text


class Encoder:
    """Embeds images, texts and audio clips with one bundle's towers."""

    def __init__(self, bundle: ModelBundle, batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.bundle = bundle
        self.batch_size = batch_size
        self._cuda = bundle.device.type == "cuda"
        # Two tokens of the context are the start and end markers.
        self.max_chunk_tokens = bundle.context_length - 2
        self._token_cache: dict[str, int] = {}
        # A causal text tower pooled at the end-of-text token never looks past it, so a batch's
        # padding beyond its longest text can be cut off: same vectors, a fraction of the work
        # for short texts (queries) that open_clip pads to the full context.
        self.trims_text = trimmable_text_tower(bundle.model)
        self._text_blocks: torch.nn.Module | None = None  # see script_text_tower

    def script_text_tower(self) -> bool:
        """Run the text tower's transformer blocks as TorchScript from now on (CPU, trimmable
        towers; same vectors). Eager PyTorch gives up the GIL and takes it back around every
        op, a hundred times a pass: beside threads that hold the GIL for milliseconds (a
        server's store queries), each pass waits behind them again and again. A scripted pass
        takes it back once. Takes about a second (ViT-B-32); returns whether it is scripted."""
        if self._text_blocks is not None:
            return True
        if not self.trims_text or self._cuda:
            return False
        model: Any = self.bundle.model
        try:
            # TorchScript is deprecated in favour of torch.compile / torch.export, but neither
            # runs a pass without Python between the ops; when it goes, this stays eager.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                self._text_blocks = torch.jit.script(model.transformer)
        except (RuntimeError, AttributeError, torch.jit.Error):  # a tower TorchScript cannot take stays eager
            return False
        return True

    @property
    def dim(self) -> int:
        return self.bundle.embed_dim

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, dim) float32, unit-norm rows."""
        out = [
            self._forward_pixels(self.preprocess_images(images[i : i + self.batch_size]))
            for i in range(0, len(images), self.batch_size)
        ]
        return self._stack(out)

    def preprocess_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The image tower's input for `images`: (n, 3, H, W), on the CPU. Separate from the
        forward pass so that callers can preprocess in parallel and batch the forward."""
        return torch.stack([self.bundle.preprocess(img) for img in images])

    def embed_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """(n, dim) for preprocessed images (see :meth:`preprocess_images`)."""
        out = [
            self._forward_pixels(pixels[i : i + self.batch_size])
            for i in range(0, len(pixels), self.batch_size)
        ]
        return self._stack(out)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, unit-norm rows. Texts longer than the context are truncated by the
        tokenizer: callers that must keep every word use :meth:`chunk` first."""
        out = [
            self._forward_texts(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)
        ]
        return self._stack(out)

    # -- audio ----------------------------------------------------------------------------

    @property
    def has_audio(self) -> bool:
        return self.bundle.audio is not None

    @property
    def audio_sample_rate(self) -> int:
        return self.require_audio().cfg.sample_rate

    @property
    def decode_sample_rate(self) -> int:
        """The rate audio is decoded at: the audio tower's, or 16 kHz for a bundle without one
        (its videos still decode; their tracks are just not embedded)."""
        return self.audio_sample_rate if self.has_audio else 16_000

    def embed_audio_clips(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """Each clip as one window -> (n, dim). Clips of equal length share a forward pass."""
        tower = self.require_audio()
        # The mel front end pads by reflection, which needs more than n_fft samples.
        min_len = tower.cfg.n_fft + 1
        padded = [c if len(c) >= min_len else np.pad(c, (0, min_len - len(c))) for c in clips]
        out = np.zeros((len(clips), self.dim), dtype=np.float32)
        by_len: dict[int, list[int]] = {}
        for i, c in enumerate(padded):
            by_len.setdefault(len(c), []).append(i)
        for idx in by_len.values():
            for start in range(0, len(idx), self.batch_size):
                part = idx[start : start + self.batch_size]
                batch = torch.from_numpy(np.stack([padded[i] for i in part]).astype(np.float32))
                with self._inference():
                    feats = tower(self._to_device(batch))
                out[part] = self._stack([feats])
        return out

    def require_audio(self) -> AudioTower:
        """The bundle's audio tower; raises EncoderError naming the bundle when it has none."""
        if self.bundle.audio is None:
            raise EncoderError(
                f"bundle {self.bundle.spec.name} has no audio tower: audio cannot be embedded in its space "
                "(train one with `mmsearch train`, or use a bundle that has one)"
            )
        return self.bundle.audio

    # -- text -----------------------------------------------------------------------------

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

    def _forward_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        with self._inference():
            feats = self.bundle.model.encode_image(self._to_device(pixels))  # type: ignore[operator]
        return feats

    def _forward_texts(self, batch: Sequence[str]) -> torch.Tensor:
        tokens = self.bundle.tokenizer(list(batch))
        with self._inference():
            if self.trims_text:
                return encode_text_trimmed(
                    self.bundle.model, self._to_device(tokens), blocks=self._text_blocks
                )
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


def trimmable_text_tower(model: torch.nn.Module) -> bool:
    """Whether `model`'s text tower is open_clip's own CLIP tower with a causal mask and pooling
    at the end-of-text token: then nothing after that token reaches the output. Subclasses and
    other towers (HF text models, CoCa) may attend or pool differently: they keep full padding."""
    return (
        type(model) is CLIP
        and getattr(model, "attn_mask", None) is not None
        and (
            getattr(model, "text_pool_type", None) == "argmax"
            or (
                getattr(model, "text_pool_type", None) == "eos"
                and getattr(model, "text_eos_id", None) is not None
            )
        )
    )


def encode_text_trimmed(
    model: torch.nn.Module, tokens: torch.Tensor, *, blocks: torch.nn.Module | None = None
) -> torch.Tensor:
    """`model.encode_text(tokens)` with the padding after the batch's last pooled token cut off.

    open_clip's CLIP.encode_text adds the whole positional table and the whole causal mask, so
    it only takes full-context input; this is the same computation on the first L positions
    (L = the last pooled position + 1). Causality makes it exact: position i attends to
    positions <= i only, and the pooled position is < L in every row. Only for towers that
    :func:`trimmable_text_tower` accepts. `blocks`: the model's transformer, scripted."""
    m: Any = model  # open_clip's CLIP: its attributes are typed as Tensor | Module
    pool_type = str(m.text_pool_type)
    eos_id = m.text_eos_id
    pooled_at = (
        tokens.argmax(dim=-1) if pool_type == "argmax" else torch.eq(tokens, eos_id).int().argmax(dim=-1)
    )
    length = int(pooled_at.max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = m.transformer.get_cast_dtype()
    x = m.token_embedding(tokens).to(cast_dtype)
    x = x + m.positional_embedding[:length].to(cast_dtype)
    x = (blocks or m.transformer)(x, attn_mask=m.attn_mask[:length, :length])
    x = m.ln_final(x)
    x = text_global_pool(x, tokens, pool_type, eos_token_id=eos_id)
    projection = m.text_projection
    if isinstance(projection, torch.nn.Linear):
        out: torch.Tensor = projection(x)
        return out
    return x @ projection if projection is not None else x
