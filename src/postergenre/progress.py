"""Progress reporting: the library says what it is doing through a `Progress`, the CLI draws it.

Long work (training epochs and batches, feature extraction, dataset preparation) calls

    progress.start(task, total, completed=0)   # a new bar, or a bar starting again
    progress.advance(task, n=1, info="")       # n more done; `info` a short status text
    progress.finish(task)

on the object it was given. The default, `Progress()`, does nothing, so library code never
tests for None; `cli/progress.py` implements the same three methods with Rich bars.
"""

from __future__ import annotations


class Progress:
    """A no-op progress sink; subclasses draw bars or log."""

    def start(self, task: str, total: int, completed: int = 0) -> None:
        pass

    def advance(self, task: str, n: int = 1, info: str = "") -> None:
        pass

    def finish(self, task: str) -> None:
        pass


SILENT = Progress()
