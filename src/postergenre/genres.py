"""The genre vocabulary and multi-hot encoding (MultiLabelBinarizer semantics, sorted classes)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

SEPARATOR = "|"


def parse_genres(text: str | None) -> list[str]:
    """'Drama|Comedy' -> ['Drama', 'Comedy']; blanks and duplicates dropped, order kept."""
    if not text or not isinstance(text, str):
        return []
    seen: dict[str, None] = {}
    for g in text.split(SEPARATOR):
        g = g.strip()
        if g:
            seen[g] = None
    return list(seen)


def build_vocabulary(label_sets: Iterable[Iterable[str]]) -> list[str]:
    """The sorted set of every genre seen."""
    return sorted({g for labels in label_sets for g in labels})


def multi_hot(label_sets: Sequence[Iterable[str]], vocabulary: Sequence[str]) -> np.ndarray:
    """An (n, len(vocabulary)) uint8 matrix; genres outside the vocabulary are ignored."""
    index = {g: i for i, g in enumerate(vocabulary)}
    y = np.zeros((len(label_sets), len(vocabulary)), dtype=np.uint8)
    for row, labels in enumerate(label_sets):
        for g in labels:
            if g in index:
                y[row, index[g]] = 1
    return y
