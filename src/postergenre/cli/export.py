"""`postergenre export`."""

from __future__ import annotations


def export() -> None:
    """(being built)"""
    raise NotImplementedError
