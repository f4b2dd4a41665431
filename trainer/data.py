"""Manifest items decoded once for the run, through the one embedding path's decode step."""

from __future__ import annotations

from collections.abc import Iterable

from encoders.embed import Decoded, Embedder, Failure
from encoders.inputs import EmbedInput, TextInput, input_for
from trainer.manifest import ItemRef


def embed_input(ref: ItemRef) -> EmbedInput:
    """The embedding path's input for a manifest item."""
    if ref.path is None:
        return TextInput(ref.text or "", name=f"text {ref.text!r:.60}")
    return input_for(ref.modality, ref.path, str(ref.path))


class ItemCache:
    """Decodes each item once: text chunked, images decoded, audio and video in the isolated
    decoder workers; the towers run on the decoded items every step."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self._items: dict[str, Decoded] = {}
        self.failures: dict[str, str] = {}

    def get(self, ref: ItemRef) -> Decoded:
        return self._items[ref.key]

    def __contains__(self, ref: ItemRef) -> bool:
        return ref.key in self._items

    def load(self, refs: Iterable[ItemRef]) -> None:
        """Decode every item not decoded yet; failures are recorded in `failures`, not raised."""
        todo = {r.key: r for r in refs if r.key not in self._items and r.key not in self.failures}
        decoded = self.embedder.decode([embed_input(r) for r in todo.values()])
        for key, d in zip(todo, decoded, strict=True):
            if isinstance(d, Failure):
                self.failures[key] = d.error
            else:
                self._items[key] = d
