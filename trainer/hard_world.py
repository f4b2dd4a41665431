"""Hard world: fine-grained, compositional classes where retrieval is not saturated.

A *look* is a handwritten digit drawn in one of four colours, in one of four corners, small or
large: 10 x 4 x 4 x 2 = 320 classes, each one attribute away from 16 others (9 digits, 3 colours,
3 corners, 1 size). A *sound* is a pitch x timbre x rhythm: 4 x 4 x 4 = 64 classes, each one
attribute away from 9 others. Captions name every attribute, so a caption singles out one class.
A random batch of 32 pairs holds a given look's one size-confuser about one time in ten: in-batch
negatives teach the easy attributes and leave the fine ones to hard-negative mining.

Group names list the attribute values joined by "-" ("7-red-tl-small", "low-bell-double"), so a
group's one-attribute neighbours (its confusable set) can be read off the name.

This module draws the classes, their pictures, sounds and captions; trainer.hard_library writes
the library (files, manifests, long videos).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from trainer.sample_data import IMAGE_SIZE, SAMPLE_RATE, compose, digit_word, glyph_coverage

SEP = "-"
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (220, 45, 40),
    "green": (45, 190, 70),
    "blue": (60, 100, 240),
    "yellow": (225, 205, 45),
}
CORNERS: dict[str, tuple[str, int, int]] = {  # key -> (words, x side, y side); side 0 = left/top
    "tl": ("top left", 0, 0),
    "tr": ("top right", 1, 0),
    "bl": ("bottom left", 0, 1),
    "br": ("bottom right", 1, 1),
}
SIZES: dict[str, tuple[int, int]] = {"small": (24, 28), "large": (38, 44)}  # glyph side, pixels

PITCHES: dict[str, tuple[str, float]] = {  # key -> (words, Hz): half an octave apart
    "low": ("low", 220.0),
    "mid": ("middle", 311.0),
    "high": ("high", 440.0),
    "vhigh": ("very high", 622.0),
}
TIMBRES: dict[str, tuple[str, tuple[tuple[float, float], ...]]] = {  # key -> (words, partials)
    "pure": ("pure", ((1.0, 1.0),)),
    "buzzy": ("buzzy", ((1.0, 1.0), (3.0, 1 / 3), (5.0, 1 / 5), (7.0, 1 / 7))),
    "bright": ("bright", tuple((float(k), 1 / k) for k in range(1, 7))),
    "bell": ("bell-like", ((1.0, 1.0), (2.76, 0.6), (5.4, 0.35))),
}
RHYTHMS: dict[str, tuple[str, int, float, float, float]] = {
    # key -> (words, beeps per period, beep seconds, beep step, period seconds)
    "single": ("single beeps", 1, 0.35, 0.35, 1.0),
    "double": ("double beeps", 2, 0.12, 0.2, 1.0),
    "triple": ("triple beeps", 3, 0.09, 0.15, 1.0),
    "rapid": ("rapid pulses", 1, 0.06, 0.125, 0.125),
}

# Attribute names by the number of parts of a group name.
ATTRIBUTES = {4: ("digit", "colour", "corner", "size"), 3: ("pitch", "timbre", "rhythm")}

_LOOK_CAPTIONS: dict[str, tuple[str, ...]] = {
    "any": (
        "a {size} {colour} {word} in the {corner}",
        "a {size} {colour} {num} in the {corner} corner",
        "the {colour} digit {word}, {size}, {corner}",
        "{size} {colour} number {num}, {corner}",
    ),
    "image": ("a picture of a {size} {colour} {word} in the {corner}",),
    "video": (
        "a video of a {size} {colour} {word} in the {corner}",
        "a {size} {colour} {num} shown in the {corner} corner",
    ),
}
_SOUND_CAPTIONS = (
    "a {pitch} {timbre} tone in {rhythm}",
    "{rhythm} of a {pitch} pitched {timbre} sound",
    "the sound of {rhythm}, {pitch} and {timbre}",
    "{timbre} {rhythm} at a {pitch} pitch",
)


@dataclass(frozen=True)
class Look:
    """A visual class: which digit, in which colour, corner and size."""

    digit: int
    colour: str
    corner: str
    size: str

    @property
    def key(self) -> str:
        return SEP.join((str(self.digit), self.colour, self.corner, self.size))

    @classmethod
    def parse(cls, key: str) -> Look:
        digit, colour, corner, size = key.split(SEP)
        return cls(int(digit), colour, corner, size)

    def caption(self, modality: str, rng: np.random.Generator) -> str:
        choices = _LOOK_CAPTIONS["any"] + _LOOK_CAPTIONS.get(modality, ())
        template = choices[int(rng.integers(len(choices)))]
        return template.format(
            size=self.size,
            colour=self.colour,
            word=digit_word(self.digit),
            num=self.digit,
            corner=CORNERS[self.corner][0],
        )


@dataclass(frozen=True)
class Sound:
    """An audio class: pitch, timbre and rhythm."""

    pitch: str
    timbre: str
    rhythm: str

    @property
    def key(self) -> str:
        return SEP.join((self.pitch, self.timbre, self.rhythm))

    def caption(self, rng: np.random.Generator) -> str:
        template = _SOUND_CAPTIONS[int(rng.integers(len(_SOUND_CAPTIONS)))]
        return template.format(
            pitch=PITCHES[self.pitch][0], timbre=TIMBRES[self.timbre][0], rhythm=RHYTHMS[self.rhythm][0]
        )


def all_looks() -> list[Look]:
    return [Look(*v) for v in itertools.product(range(10), COLOURS, CORNERS, SIZES)]


def all_sounds() -> list[Sound]:
    return [Sound(*v) for v in itertools.product(PITCHES, TIMBRES, RHYTHMS)]


def neighbours(key: str, keys: Sequence[str]) -> list[str]:
    """The groups among `keys` that differ from `key` in exactly one attribute."""
    parts = key.split(SEP)
    out = []
    for other in keys:
        theirs = other.split(SEP)
        if len(theirs) == len(parts) and sum(a != b for a, b in zip(parts, theirs, strict=True)) == 1:
            out.append(other)
    return out


def confusable_sets(keys: Sequence[str]) -> Iterator[tuple[str, tuple[str, ...]]]:
    """For each attribute, the sets of groups that agree on every other attribute, named by the
    attribute they differ in: ("size", ("7-red-tl-large", "7-red-tl-small")), ...; only sets of
    at least two groups. Groups of one part have none."""
    by_width: dict[int, list[str]] = {}
    for k in dict.fromkeys(keys):
        by_width.setdefault(len(k.split(SEP)), []).append(k)
    for width, group in sorted(by_width.items()):
        if width < 2:
            continue
        names = ATTRIBUTES.get(width) or tuple(f"attribute {i}" for i in range(width))
        for position in range(width):
            sets: dict[tuple[str, ...], list[str]] = {}
            for k in group:
                parts = k.split(SEP)
                sets.setdefault(tuple(parts[:position] + parts[position + 1 :]), []).append(k)
            for members in sets.values():
                if len(members) > 1:
                    yield names[position], tuple(sorted(members))


# --- pictures -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Drawing:
    """Where and how one look is drawn: fixed for a still image or a whole video shot."""

    glyph: np.ndarray
    x: int
    y: int
    background: np.ndarray
    ink: np.ndarray

    def render(self, dx: int = 0, dy: int = 0) -> Image.Image:
        h, w = self.glyph.shape
        x = int(np.clip(self.x + dx, 0, IMAGE_SIZE - w))
        y = int(np.clip(self.y + dy, 0, IMAGE_SIZE - h))
        return compose(self.glyph, x, y, self.background, self.ink)


def draw(look: Look, pixels: np.ndarray, rng: np.random.Generator) -> Drawing:
    """A look drawn from one 8x8 digit sample, with jittered size, margin and colours."""
    lo, hi = SIZES[look.size]
    size = int(rng.integers(lo, hi + 1))
    _, x_side, y_side = CORNERS[look.corner]
    x_margin, y_margin = (int(v) for v in rng.integers(1, 6, size=2))
    x = x_margin if x_side == 0 else IMAGE_SIZE - size - x_margin
    y = y_margin if y_side == 0 else IMAGE_SIZE - size - y_margin
    background = np.full(3, rng.uniform(0, 30), dtype=np.float32)
    ink = np.clip(np.array(COLOURS[look.colour]) + rng.uniform(-20, 20, size=3), 0, 255).astype(np.float32)
    return Drawing(glyph_coverage(pixels, size), x, y, background, ink)


def shot_frames(drawing: Drawing, n_frames: int, rng: np.random.Generator) -> list[Image.Image]:
    """A still shot: the same drawing with a pixel of hand-held jitter per frame."""
    return [drawing.render(*(int(v) for v in rng.integers(-1, 2, size=2))) for _ in range(n_frames)]


# --- sounds ---------------------------------------------------------------------------------------


def sound_clip(sound: Sound, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """A noisy float32 clip in [-1, 1]: the sound's partials on the pitch, gated by its rhythm
    (bell-like sounds decay within each beep). Pitch, tempo, start, level and noise vary."""
    t = np.arange(n_samples, dtype=np.float64) / SAMPLE_RATE
    freq = PITCHES[sound.pitch][1] * rng.uniform(0.98, 1.02)
    tone = sum(
        amp * np.sin(2 * np.pi * freq * ratio * t + rng.uniform(0, np.pi))
        for ratio, amp in TIMBRES[sound.timbre][1]
    )
    _, beeps, beep, step, period = RHYTHMS[sound.rhythm]
    period *= rng.uniform(0.92, 1.08)
    local = (t - rng.uniform(0, 0.2)) % period
    within = local % step
    ramp = 0.01  # 10 ms fades, so beeps start and stop without clicks
    envelope = np.clip(np.minimum(within, beep - within) / ramp, 0, 1)
    envelope[(local // step >= beeps) | (within >= beep)] = 0
    if sound.timbre == "bell":
        envelope = envelope * np.exp(-within / (beep / 2))
    signal = np.asarray(tone) * envelope
    peak = np.abs(signal).max()
    level = rng.uniform(0.1, 0.8)
    signal = signal * (level / peak) if peak > 0 else signal
    signal += rng.normal(0, level * rng.uniform(0.02, 0.08), n_samples)
    return np.clip(signal, -1, 1).astype(np.float32)
