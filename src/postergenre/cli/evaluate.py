"""`postergenre evaluate`."""

from __future__ import annotations


def evaluate() -> None:
    """(being built)"""
    raise NotImplementedError
