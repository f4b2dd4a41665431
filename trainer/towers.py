"""Forward passes of a bundle's towers with gradients, one modality at a time."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from encoders.bundle import ModelBundle
from encoders.modality import Modality
from trainer.data import Decoded

MIN_AUDIO_SECONDS = 0.5


class Towers:
    def __init__(self, bundle: ModelBundle, rng: random.Random, *, augment: bool = False) -> None:
        self.bundle = bundle
        self.device = bundle.device
        self.rng = rng
        # Pictures move and change size between a still image and a video's frames: random
        # shifts and zoom-outs teach the image tower not to care. Applied before open_clip's
        # own preprocessing, only while training.
        self.augment = (
            transforms.RandomAffine(degrees=8, translate=(0.15, 0.15), scale=(0.45, 1.05))
            if augment
            else None
        )
        self.training = True

    def _pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        aug = self.augment if self.training else None
        return torch.stack([self.bundle.preprocess(aug(img) if aug else img) for img in images]).to(
            self.device
        )

    def parameters(self, tower: str) -> Iterator[torch.nn.Parameter]:
        model = self.bundle.model
        if tower == "image":
            yield from model.visual.parameters()  # type: ignore[union-attr]
        elif tower == "text":
            for name, p in model.named_parameters():
                if not name.startswith("visual.") and name != "logit_scale":
                    yield p
        elif tower == "audio" and self.bundle.audio is not None:
            yield from self.bundle.audio.parameters()

    def embed(self, items: Sequence[Decoded], modality: Modality) -> torch.Tensor:
        model = self.bundle.model
        if modality == Modality.IMAGE:
            pixels = self._pixels([i.image for i in items if i.image is not None])
            return model.encode_image(pixels, normalize=True)  # type: ignore[operator]
        if modality == Modality.TEXT:
            tokens = torch.stack([i.tokens for i in items if i.tokens is not None]).to(self.device)
            return model.encode_text(tokens, normalize=True)  # type: ignore[operator]
        if modality == Modality.VIDEO:
            frames = [i.frames for i in items if i.frames is not None]
            flat = self._pixels([f for fs in frames for f in fs])
            feats = model.encode_image(flat, normalize=True)  # type: ignore[operator]
            pooled = torch.stack([chunk.mean(dim=0) for chunk in feats.split([len(f) for f in frames])])
            return F.normalize(pooled, dim=-1)
        return self._embed_audio([i.samples for i in items if i.samples is not None])

    def _embed_audio(self, clips: list[np.ndarray]) -> torch.Tensor:
        tower = self.bundle.audio
        if tower is None:
            raise ValueError("the bundle has no audio tower")
        cfg = tower.cfg
        # Random crops of one common length let the batch share a forward pass (and BatchNorm
        # statistics) while every clip keeps its own content.
        longest = int(cfg.window_seconds * cfg.sample_rate)
        length = min(longest, min(len(c) for c in clips))
        length = max(length, int(MIN_AUDIO_SECONDS * cfg.sample_rate))
        batch = []
        for c in clips:
            if len(c) < length:
                c = np.pad(c, (0, length - len(c)))
            start = self.rng.randrange(0, len(c) - length + 1)
            batch.append(c[start : start + length])
        return tower(torch.from_numpy(np.stack(batch).astype(np.float32)).to(self.device))
