from __future__ import annotations

import itertools

from encoders.encoder import Encoder
from encoders.text import chunk_text


def _words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def test_short_text_is_one_chunk() -> None:
    chunks = chunk_text("hello world", lambda w: 1, max_tokens=10, overlap_tokens=2)
    assert [(c.index, c.text, c.start, c.end) for c in chunks] == [(0, "hello world", 0, 11)]


def test_long_text_covers_every_word_with_overlap() -> None:
    text = _words(100)
    chunks = chunk_text(text, lambda w: 1, max_tokens=10, overlap_tokens=3)
    assert len(chunks) > 10
    covered = set()
    for c in chunks:
        words = c.text.split()
        assert len(words) <= 10
        assert text[c.start : c.end] == c.text
        covered.update(words)
    assert covered == set(text.split())
    # Neighbours share the overlap.
    for a, b in itertools.pairwise(chunks):
        assert set(a.text.split()) & set(b.text.split())


def test_word_longer_than_budget_is_split_not_dropped() -> None:
    text = "short " + "x" * 50 + " tail"
    chunks = chunk_text(text, lambda w: len(w), max_tokens=8, overlap_tokens=0)
    covered = set()
    for c in chunks:
        assert sum(len(w) for w in c.text.split()) <= 8
        covered.update(range(c.start, c.end))
    assert all(i in covered for i, ch in enumerate(text) if ch != " ")
    assert chunks[-1].text.endswith("tail")


def test_encoder_chunks_fit_the_context(encoder: Encoder) -> None:
    text = " ".join(f"sentence {i} about cats, dogs and tokenisation." for i in range(80))
    chunks = encoder.chunk(text)
    assert len(chunks) > 1
    tok = encoder.bundle.tokenizer
    for c in chunks:
        assert len(tok.encode(c.text)) <= encoder.bundle.context_length - 2
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
