"""Image tower over batches of fitted pixels: uint8 in, unit vectors out, device-aware.

The decode workers hand over pictures already at the model's input size (encoders.image_decode),
so what is left per batch is one stack, one copy and the forward pass. The copy moves uint8
(a quarter of float32's bytes) from pinned host memory without blocking, and normalisation runs
on the device. On CUDA, JPEGs can also be decoded on the GPU (nvJPEG through torchvision), in
batches, then fitted there; on CPU the same code runs with the CPU decoder (tests).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import open_clip
import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

from encoders.encoder import Encoder
from encoders.image_decode import ImageTarget

_INTERPOLATION = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}


class PixelEncoder:
    """Embeds fitted uint8 pictures with an Encoder's image tower (same vectors as
    Encoder.embed_images on the original pictures, when the fit was exact)."""

    def __init__(self, encoder: Encoder, *, draft: bool = True) -> None:
        self.encoder = encoder
        bundle = encoder.bundle
        self.device = bundle.device
        self.cuda = self.device.type == "cuda"
        cfg = open_clip.get_model_preprocess_cfg(bundle.model)
        self.target = ImageTarget.from_preprocess_cfg(cfg, draft=draft)
        shape = (1, 3, 1, 1)
        self._mean = (
            torch.tensor(cfg.get("mean", (0.0, 0.0, 0.0)), dtype=torch.float32).view(shape).to(self.device)
        )
        self._std = (
            torch.tensor(cfg.get("std", (1.0, 1.0, 1.0)), dtype=torch.float32).view(shape).to(self.device)
        )

    # -- fitted pixels from the decode workers ---------------------------------------------

    def embed_fitted(self, pictures: Sequence[np.ndarray]) -> np.ndarray:
        """(n, dim) float32 unit rows for (H, W, 3) uint8 pictures at the target size."""
        if not pictures:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        batch = torch.from_numpy(np.stack(pictures))
        if self.cuda:
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return self._forward(batch.permute(0, 3, 1, 2))

    # -- JPEG bytes decoded on the device --------------------------------------------------

    def decode_jpegs(self, datas: Sequence[bytes]) -> list[torch.Tensor | None]:
        """Each JPEG decoded on the device to (3, H, W) uint8, or None where it failed (the
        caller decodes those in a worker instead). One batched call; one by one on a failure."""
        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        device = self.device if self.cuda else "cpu"
        try:
            return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            out: list[torch.Tensor | None] = []
            for t in tensors:
                try:
                    out.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    out.append(None)
            return out

    def fit_tensor(self, image: torch.Tensor) -> torch.Tensor:
        """A (3, H, W) uint8 picture resized and cropped like open_clip's transform, on its device."""
        th, tw = self.target.size
        mode = _INTERPOLATION.get(self.target.interpolation, InterpolationMode.BICUBIC)
        if self.target.resize_mode == "squash" or th != tw:
            return tvf.resize(image, [th, tw], interpolation=mode, antialias=True)
        resized = tvf.resize(image, [th], interpolation=mode, antialias=True)
        return tvf.center_crop(resized, [th, tw])

    def embed_tensors(self, images: Sequence[torch.Tensor]) -> np.ndarray:
        """(n, dim) for (3, H, W) uint8 pictures of any size on the device."""
        if not images:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        return self._forward(torch.stack([self.fit_tensor(i) for i in images]))

    # -- the forward pass ------------------------------------------------------------------

    def _forward(self, batch: torch.Tensor) -> np.ndarray:
        """(n, 3, H, W) uint8 on any device -> (n, dim) float32 unit rows."""
        with self._inference():
            x = batch.to(self.device, non_blocking=True).float().div(255)
            x = (x - self._mean) / self._std
            feats = self.encoder.bundle.model.encode_image(x)  # type: ignore[operator]
        feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        return feats.cpu().numpy().astype(np.float32, copy=False)

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        with torch.inference_mode():
            if self.cuda:
                dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
                with torch.autocast("cuda", dtype=dtype):
                    yield
            else:
                yield
