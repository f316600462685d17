"""`postergenre predict`."""

from __future__ import annotations


def predict() -> None:
    """(being built)"""
    raise NotImplementedError
