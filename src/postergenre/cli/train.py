"""`postergenre train`."""

from __future__ import annotations


def train() -> None:
    """(being built)"""
    raise NotImplementedError
