"""What bench/quality.py needs to know about a generated world: its files, its queries, its
confusable groups, and which hits are relevant to which class."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.quality_measures import SegmentQuery
from encoders.bundle import load_bundle
from encoders.embed import Embedder
from encoders.encoder import Encoder
from encoders.modality import Modality
from indexer.filters import FilterSpec, Range
from indexer.schema import Key
from indexer.store import VectorStore
from server.query_types import QueryInput
from trainer.evaluate import EvalItems, embed_items
from trainer.hard_library import LongVideo, load_long_videos
from trainer.hard_world import confusable_sets, neighbours
from trainer.manifest import Manifest, load_manifest
from trainer.worlds import generate_world, group_of

DIGIT_SETS = {"3/5/8": ("3", "5", "8"), "1/7": ("1", "7"), "4/9": ("4", "9")}
# Long videos are the only media of the hard world that last more than a few seconds.
LONG_ONLY = FilterSpec(must=(Range(Key.DURATION, gte=30.0),))


def _groups(queries: EvalItems, targets: EvalItems) -> list[str]:
    return sorted(set(queries.groups.tolist()) | set(targets.groups.tolist()))


def _order(key: str) -> str:
    """A fixed pseudo-random order, so a reduced run takes a spread of classes, not the first."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass
class World:
    name: str
    root: Path
    long: dict[str, LongVideo] = field(default_factory=dict)  # by file name

    @classmethod
    def generate(cls, name: str, root: Path) -> World:
        generate_world(name, root)
        long = {Path(v.path).name: v for v in load_long_videos(root)} if name == "hard" else {}
        return cls(name, root, long)

    @property
    def train_manifest(self) -> Path:
        return self.root / "train.jsonl"

    @property
    def test(self) -> Manifest:
        return load_manifest(self.root / "test.jsonl")

    @property
    def long_only(self) -> FilterSpec | None:
        return LONG_ONLY if self.long else None

    def test_folders(self) -> list[Path]:
        folders = ["images/test", "audio/test", "videos/test"] + (["long/test"] if self.long else [])
        return [self.root / f for f in folders]

    # -- evaluation on embedded items --------------------------------------------------------

    def embed_test(self, bundle: Path) -> dict[Modality, EvalItems]:
        embedder = Embedder(Encoder(load_bundle(str(bundle))))
        try:
            return embed_items(embedder, self.test)
        finally:
            embedder.close()

    @staticmethod
    def pairs(items: dict[Modality, EvalItems]) -> list[tuple[Modality, Modality]]:
        """Every (query, target) pair of modalities that share a class."""
        return [
            (q, t)
            for q in items
            for t in items
            if q != t and set(items[q].groups.tolist()) & set(items[t].groups.tolist())
        ]

    def confusable_sets(self, queries: EvalItems, targets: EvalItems) -> list[tuple[str, tuple[str, ...]]]:
        """Sets of mutually confusable groups, named by what they differ in."""
        if self.name == "digits":
            return list(DIGIT_SETS.items())
        return list(confusable_sets(_groups(queries, targets)))

    def confusers(self, queries: EvalItems, targets: EvalItems) -> dict[str, list[str]]:
        """Each group's look-alikes: hard world, the groups one attribute away; digits, the other
        digits of its confusable set (3/5/8, 1/7, 4/9)."""
        groups = _groups(queries, targets)
        if self.name == "digits":
            return {g: [x for x in members if x != g] for members in DIGIT_SETS.values() for g in members}
        return {g: neighbours(g, groups) for g in groups}

    # -- relevance of stored hits ------------------------------------------------------------

    def relevant(self, payload: dict[str, Any], group: str) -> bool:
        name = Path(str(payload.get(Key.SOURCE, ""))).name
        video = self.long.get(name)
        if video is None:
            return group_of(self.name, name) == group
        if payload.get(Key.POOLED):
            return any(s.group == group for s in video.shots)
        t0, t1 = float(payload.get(Key.T_START, 0.0)), float(payload.get(Key.T_END, 0.0))
        return any(s.group == group and s.t_start < t1 and s.t_end > t0 for s in video.shots)

    def count_relevant(self, store: VectorStore) -> Callable[[str], int]:
        """How many stored points are relevant to a class (for the ideal nDCG)."""
        payloads: list[dict[str, Any]] = []
        offset = None
        while True:
            page, offset = store.scroll(limit=1000, offset=offset)
            payloads += [p.payload for p in page]
            if offset is None:
                break
        counts: dict[str, int] = {}

        def count(group: str) -> int:
            if group not in counts:
                counts[group] = sum(self.relevant(p, group) for p in payloads)
            return counts[group]

        return count

    # -- queries -----------------------------------------------------------------------------

    def text_queries(self, n: int) -> list[tuple[QueryInput, str]]:
        """Up to n held-out captions of distinct texts, with their class."""
        texts: dict[str, str] = {}
        for p in self.test.pairs:
            for ref in (p.a, p.b):
                if ref.modality == Modality.TEXT and ref.text:
                    texts.setdefault(ref.text, p.group)
        chosen = sorted(texts, key=_order)[:n]
        return [(QueryInput(text=t), texts[t]) for t in chosen]

    def media_queries(self, per_modality: int) -> list[tuple[QueryInput, str]]:
        """Up to `per_modality` held-out images, sounds and videos as queries, with their class."""
        found: dict[str, tuple[Path, str, str]] = {}
        for p in self.test.pairs:
            for ref in (p.a, p.b):
                if ref.path is not None:
                    found.setdefault(str(ref.path), (ref.path, ref.modality.value, p.group))
        out = []
        for modality in ("image", "audio", "video"):
            paths = sorted((k for k, v in found.items() if v[1] == modality), key=_order)[:per_modality]
            for k in paths:
                path, _, group = found[k]
                data = path.read_bytes()
                query = {
                    "image": QueryInput(image=data),
                    "audio": QueryInput(audio=data),
                    "video": QueryInput(video=data),
                }
                out.append((query[modality], group))
        return out

    def segment_queries(self, n: int) -> list[SegmentQuery]:
        """Hard world: for up to n/2 long videos, the target's caption and a held-out image of its
        class; the answer is the target's time range in that video. Digits world: held-out
        captions; the answer is any video segment of the class."""
        if not self.long:
            return [SegmentQuery(q, "text", group) for q, group in self.text_queries(n)]
        out = []
        for name in sorted(self.long, key=_order)[: max(1, n // 2)]:
            v = self.long[name]
            t = v.target
            image = self.root / "images" / "test" / f"{t.group}__000.png"
            for kind, query in (
                ("text", QueryInput(text=v.caption)),
                ("image", QueryInput(image=image.read_bytes())),
            ):
                out.append(SegmentQuery(query, kind, t.group, name, t.t_start, t.t_end))
        return out
