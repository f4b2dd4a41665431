"""Images decoded and fitted in the workers give the tower what the bundle's own preprocessing
gives it: exactly at full scale, within a small error with JPEG draft decoding."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from encoders.encoder import Encoder
from encoders.errors import MediaDecodeError
from encoders.image_decode import ImageTarget, decode_fit, fit
from encoders.media import decode_image
from encoders.pixel_batch import PixelEncoder
from tests.media import make_image


def _encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=92)
    return buf.getvalue()


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (1200, 300), (64, 64), (40, 30)])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_fitted_pixels_embed_like_the_bundle_preprocessing(
    encoder: Encoder, size: tuple[int, int], fmt: str
) -> None:
    pixels = PixelEncoder(encoder)
    data = _encoded(make_image(3, size=size), fmt)
    exact = decode_fit(data, replace(pixels.target, draft=False))
    assert (
        exact.fitted
        and exact.pixels.shape == (*pixels.target.size, 3)
        and (exact.width, exact.height) == size
    )
    reference = encoder.embed_images([decode_image(data)])
    np.testing.assert_allclose(pixels.embed_fitted([exact.pixels]), reference, atol=1e-5)
    drafted = decode_fit(data, pixels.target)
    assert float(pixels.embed_fitted([drafted.pixels])[0] @ reference[0]) > 0.999


def test_fit_matches_torchvision_for_a_larger_target() -> None:
    target = ImageTarget(size=(224, 224))
    tv = transforms.Compose(
        [
            transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224),
        ]
    )
    for size in [(640, 480), (333, 1000), (225, 224), (100, 80)]:
        img = make_image(5, size=size)
        assert np.array_equal(np.asarray(fit(img, target)), np.asarray(tv(img))), size
    squash = ImageTarget(size=(224, 224), resize_mode="squash")
    img = make_image(6, size=(640, 480))
    assert fit(img, squash).size == (224, 224)


def test_palette_alpha_grey_and_animated_images_decode_to_rgb(encoder: Encoder) -> None:
    target = PixelEncoder(encoder).target
    for img in (
        make_image(1).convert("P"),
        make_image(2).convert("RGBA"),
        make_image(3).convert("L"),
    ):
        out = decode_fit(_encoded(img, "PNG"), target)
        assert out.pixels.dtype == np.uint8 and out.pixels.shape[-1] == 3
    frames = [make_image(k) for k in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    assert decode_fit(buf.getvalue(), target).fitted


def test_bad_images_fail_with_a_reason() -> None:
    target = ImageTarget(size=(64, 64), max_pixels=10_000)
    with pytest.raises(MediaDecodeError, match="empty"):
        decode_fit(b"", target)
    with pytest.raises(MediaDecodeError, match="not a recognised image format"):
        decode_fit(b"GIF89a but not really" * 10, target)
    with pytest.raises(MediaDecodeError, match="above the 10000 pixel limit"):
        decode_fit(_encoded(make_image(1, size=(200, 100)), "PNG"), target)
    data = _encoded(make_image(1, size=(64, 64)), "PNG")
    with pytest.raises(MediaDecodeError, match="truncated"):
        decode_fit(data[: len(data) // 2], target)


def test_device_decode_and_fit_on_cpu_tensors(encoder: Encoder) -> None:
    pixels = PixelEncoder(encoder)
    data = _encoded(make_image(4, size=(320, 240)), "JPEG")
    (decoded,) = pixels.decode_jpegs([data])
    assert decoded is not None and decoded.dtype == torch.uint8 and tuple(decoded.shape) == (3, 240, 320)
    assert pixels.decode_jpegs([b"\xff\xd8\xff garbage"]) == [None]
    vec = pixels.embed_tensors([decoded])[0]
    reference = encoder.embed_images([decode_image(data)])[0]
    assert float(vec @ reference) > 0.99
