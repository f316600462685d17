"""`postergenre serve`."""

from __future__ import annotations


def serve() -> None:
    """(being built)"""
    raise NotImplementedError
