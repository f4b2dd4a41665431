"""Generated test media: nothing is downloaded."""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image, ImageDraw

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".webp": "WEBP", ".gif": "GIF", ".bmp": "BMP", ".tiff": "TIFF"}


def make_image(seed: int, size: tuple[int, int] = (96, 80)) -> Image.Image:
    """A distinct picture per seed: a coloured background with a few shapes."""
    rng = random.Random(seed)
    img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))  # type: ignore[arg-type]
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = rng.randrange(size[0] - 20), rng.randrange(size[1] - 20)
        box = (x0, y0, x0 + rng.randrange(10, 40), y0 + rng.randrange(10, 40))
        colour = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            draw.ellipse(box, fill=colour)  # type: ignore[arg-type]
        else:
            draw.rectangle(box, fill=colour)  # type: ignore[arg-type]
    return img


def image_bytes(seed: int, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    make_image(seed).save(buf, format=fmt)
    return buf.getvalue()


TEXTS = [
    "a red bicycle leaning against a brick wall",
    "sunset over a calm mountain lake",
    "a bowl of ramen with a soft boiled egg",
    "two kittens sleeping on a windowsill",
    "the quarterly financial report shows growth",
    "instructions for assembling a bookshelf",
]


def write_library(root: Path, n_images: int = 6) -> dict[str, Path]:
    """A small media library: images in every supported format, texts, one long text, a corrupt
    image, a truncated image and an unsupported file. Returns named paths."""
    root.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    exts = list(FORMATS)
    for i in range(n_images):
        ext = exts[i % len(exts)]
        p = root / "images" / f"img{i}{ext}"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(image_bytes(i, FORMATS[ext]))
        paths[f"img{i}"] = p
    for i, t in enumerate(TEXTS):
        p = root / "texts" / f"t{i}.txt"
        p.parent.mkdir(exist_ok=True)
        p.write_text(t)
        paths[f"t{i}"] = p
    long = root / "texts" / "long.md"
    long.write_text(" ".join(f"Paragraph {i} describes item number {i} in detail." for i in range(200)))
    paths["long"] = long
    corrupt = root / "broken" / "corrupt.jpg"
    corrupt.parent.mkdir(exist_ok=True)
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    paths["corrupt"] = corrupt
    truncated = root / "broken" / "truncated.png"
    truncated.write_bytes(image_bytes(99)[:200])
    paths["truncated"] = truncated
    (root / "notes.bin").write_bytes(b"\x00\x01")
    paths["unsupported"] = root / "notes.bin"
    return paths
