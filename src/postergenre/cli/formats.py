"""The output formats of `postergenre predict`: an aligned table, JSON lines, CSV.

A JSON line is `predict.json_record` (the web service answers with the same object).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FORMATS = ("table", "json", "csv")


def format_table_row(name: str, top: list[tuple[str, float]], width: int = 0) -> str:
    """`The Pianist (2002)   Drama (0.71), War (0.43), History (0.40)`"""
    genres = ", ".join(f"{g} ({p:.2f})" for g, p in top) or "(no genre over its threshold)"
    return f"{name:<{width}}   {genres}"


def csv_header(genres: Sequence[str]) -> list[str]:
    return ["path", "title", "top", *genres]


def csv_row(source: str, title: str | None, top: list[tuple[str, float]],
            probabilities: np.ndarray) -> list[str]:
    """path, title, top genres as 'Drama|War|History', then one score per genre."""
    return [source, title or "", "|".join(g for g, _ in top),
            *(f"{p:.4f}" for p in probabilities)]
