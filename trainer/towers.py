"""Forward passes of a bundle's towers with gradients, over items of the one embedding path.

The inference path (encoders.embed) runs the same towers without gradients; here text is pooled
over its chunks exactly as there, while pictures may be augmented and audio is randomly cropped.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from encoders.bundle import ModelBundle
from encoders.decode import DecodedAudio, DecodedVideo
from encoders.embed import Decoded, DecodedImage, DecodedText, modality_of
from encoders.modality import Modality

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
        """Unit vectors (len(items), dim) for decoded items of one modality."""
        if any(modality_of(i) != modality for i in items):
            raise ValueError(f"every item of a {modality} batch must be {modality}")
        if modality == Modality.TEXT:
            return self._texts([i for i in items if isinstance(i, DecodedText)])
        if modality == Modality.IMAGE:
            return self._pictures([[i.image] for i in items if isinstance(i, DecodedImage)])
        if modality == Modality.VIDEO:
            videos = [i for i in items if isinstance(i, DecodedVideo)]
            return self._pictures([[Image.fromarray(f) for f in v.frames] for v in videos])
        return self._audio([i.samples for i in items if isinstance(i, DecodedAudio)])

    def _texts(self, texts: list[DecodedText]) -> torch.Tensor:
        # A long text is the mean of its chunks, as on the inference path.
        chunks = [c.text for t in texts for c in t.chunks]
        tokens = self.bundle.tokenizer(chunks).to(self.device)
        feats = self.bundle.model.encode_text(tokens, normalize=True)  # type: ignore[operator]
        return _pool(feats, [len(t.chunks) for t in texts])

    def _pictures(self, groups: list[list[Image.Image]]) -> torch.Tensor:
        """Each group (one image, or a video's frames) -> the normalised mean of its pictures."""
        aug = self.augment if self.training else None
        flat = [aug(img) if aug else img for g in groups for img in g]
        pixels = torch.stack([self.bundle.preprocess(img) for img in flat]).to(self.device)
        feats = self.bundle.model.encode_image(pixels, normalize=True)  # type: ignore[operator]
        return _pool(feats, [len(g) for g in groups])

    def _audio(self, clips: list[np.ndarray]) -> torch.Tensor:
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


def _pool(feats: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    if all(n == 1 for n in sizes):
        return feats  # already unit rows: skip a no-op mean and renormalisation
    pooled = torch.stack([part.mean(dim=0) for part in feats.split(sizes)])
    return F.normalize(pooled, dim=-1)
