"""Image decoding for bulk ingest, run in a decoder worker: decode, then fit to the model's input.

A worker returns the pixels the image tower will see, not the full picture: a 12-megapixel
photo crosses the pipe as 224x224x3 bytes. Fitting repeats the bundle's own preprocessing
(open_clip's Resize + CenterCrop, or squash) with the same Pillow calls, so the result is
identical to preprocessing the fully decoded image. With `draft`, a JPEG is decoded at a
reduced scale (libjpeg's DCT scaling: 1/2, 1/4, 1/8) that still leaves at least the model's
input size, which costs a fraction of a full decode and changes the fitted pixels only by the
difference between DCT-domain and bicubic downscaling (measured in tests/unit/test_ingest_images.py).

Torch-free: workers import only Pillow and numpy.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from encoders.errors import MediaDecodeError
from encoders.media import IMAGE_FORMATS, MAX_IMAGE_PIXELS

# open_clip's interpolation names -> Pillow's filters (torchvision maps them the same way).
_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
# Resize modes fitted here; any other leaves the resize to the bundle's own preprocessing.
FITTED_MODES = ("shortest", "squash")


@dataclass(frozen=True)
class ImageTarget:
    """What the image tower takes: (height, width), how open_clip resizes to it, and caps."""

    size: tuple[int, int]
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"
    draft: bool = True
    max_pixels: int = MAX_IMAGE_PIXELS

    @property
    def fits(self) -> bool:
        """Whether the worker's output is exactly the model input (else: decoded only)."""
        return self.resize_mode in FITTED_MODES and self.interpolation in _FILTERS

    @classmethod
    def from_preprocess_cfg(
        cls, cfg: Mapping[str, Any], *, draft: bool = True, max_pixels: int = MAX_IMAGE_PIXELS
    ) -> ImageTarget:
        """From open_clip's ``get_model_preprocess_cfg(model)``."""
        size = cfg.get("size", 224)
        hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        return cls(
            size=hw,
            resize_mode=str(cfg.get("resize_mode", "shortest")),
            interpolation=str(cfg.get("interpolation", "bicubic")),
            draft=draft,
            max_pixels=max_pixels,
        )


@dataclass
class FittedImage:
    pixels: np.ndarray  # uint8 (H, W, 3) RGB
    width: int  # the original picture's size
    height: int
    fitted: bool  # pixels are exactly the model input; else the decoded picture, for preprocess


def decode_fit(source: str | bytes | bytearray | memoryview, target: ImageTarget) -> FittedImage:
    """Decode an image file (a path) or its bytes and fit it to `target`. Raises MediaDecodeError
    for empty, corrupt, truncated, unknown or oversized images (the caller adds the name)."""
    data = _read(source) if isinstance(source, str) else bytes(source)
    if not data:
        raise MediaDecodeError("empty image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
                width, height = img.size
                if width * height > target.max_pixels:
                    raise MediaDecodeError(
                        f"image is {width}x{height} pixels, above the {target.max_pixels} pixel limit "
                        "(decompression bomb guard)"
                    )
                if target.draft and target.fits and img.format == "JPEG":
                    img.draft("RGB", _draft_request(target))
                img.seek(0)  # animated formats: the first frame stands for the file
                img.load()  # the whole decode happens here: truncation fails here
                rgb = img.convert("RGB")
    except MediaDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MediaDecodeError(f"image too large to decode safely ({exc})") from exc
    except Image.UnidentifiedImageError as exc:
        accepted = ", ".join(IMAGE_FORMATS)
        raise MediaDecodeError(f"not a recognised image format (accepted: {accepted})") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise MediaDecodeError(f"corrupt or truncated image ({exc})") from exc
    if not target.fits:
        return FittedImage(np.asarray(rgb), width, height, fitted=False)
    return FittedImage(np.asarray(fit(rgb, target)), width, height, fitted=True)


def fit(img: Image.Image, target: ImageTarget) -> Image.Image:
    """`img` resized and cropped as open_clip's inference transform does (torchvision's
    Resize and CenterCrop on a PIL image are these Pillow calls)."""
    th, tw = target.size
    resample = _FILTERS[target.interpolation]
    if target.resize_mode == "squash" or th != tw:
        return img if img.size == (tw, th) else img.resize((tw, th), resample)
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = th, int(th * long / short)
    out_w, out_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (out_w, out_h) != (w, h):
        img = img.resize((out_w, out_h), resample)
    return center_crop(img, th, tw)


def center_crop(img: Image.Image, th: int, tw: int) -> Image.Image:
    w, h = img.size
    if (w, h) == (tw, th):
        return img
    if w < tw or h < th:  # torchvision pads with zeros first; only when an image is tiny
        padded = Image.new("RGB", (max(w, tw), max(h, th)))
        padded.paste(img, (max(tw - w, 0) // 2, max(th - h, 0) // 2))
        img, (w, h) = padded, padded.size
    top, left = round((h - th) / 2.0), round((w - tw) / 2.0)
    return img.crop((left, top, left + tw, top + th))


def _draft_request(target: ImageTarget) -> tuple[int, int]:
    """The size to ask libjpeg for. It picks the largest scale that keeps both sides >= the
    request, so the fit that follows only ever scales down (the short side for `shortest`)."""
    th, tw = target.size
    return tw, th


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise MediaDecodeError(f"cannot read file ({exc.strerror or exc})") from exc
