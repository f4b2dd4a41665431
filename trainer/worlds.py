"""The generated sample worlds, by name: "digits" (ten classes; the demo's) and "hard" (hundreds of
fine-grained classes, minute-long videos; for measuring mining, re-ranking and calibration)."""

from __future__ import annotations

from pathlib import Path

from trainer.sample_data import SampleSummary

WORLDS = ("digits", "hard")


def generate_world(world: str, out_dir: str | Path, *, seed: int = 0, force: bool = False) -> SampleSummary:
    """Writes the named world's library into `out_dir` (reused when already complete)."""
    if world == "digits":
        from trainer.sample_data import generate_sample_library

        return generate_sample_library(out_dir, seed=seed, force=force)
    if world == "hard":
        from trainer.hard_library import generate_hard_library

        return generate_hard_library(out_dir, seed=seed, force=force)
    raise ValueError(f"unknown world {world!r}: worlds are {', '.join(WORLDS)}")


def group_of(world: str, source: str | Path) -> str:
    """The class of one of a world's generated files, from its name."""
    name = Path(source).name
    if world == "digits":
        return name.split("_", 1)[0]
    if world == "hard":
        return name.split("__", 1)[0]
    raise ValueError(f"unknown world {world!r}: worlds are {', '.join(WORLDS)}")
