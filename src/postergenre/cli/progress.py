"""Rich progress bars for the library's `Progress` events (and the bar of list commands)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from postergenre.progress import Progress as ProgressSink

LONG_LIST = 200  # show a bar for lists this long even when stderr is not a terminal


class RichProgress(ProgressSink):
    """One Rich bar per task name (epochs, batches, feature extraction...), on stderr, with
    its count, a status text (loss, val macro AP, posters/s) and the time left."""

    def __init__(self, enabled: bool = True, transient: bool = False) -> None:
        self.bars: Progress | None = None
        self.tasks: dict[str, TaskID] = {}
        if enabled:
            self.bars = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 console=Console(stderr=True), transient=transient)
            self.bars.start()

    def start(self, task: str, total: int, completed: int = 0) -> None:
        if self.bars is None or (total == 0 and task not in self.tasks):
            return
        if task in self.tasks:
            self.bars.reset(self.tasks[task], total=total, completed=completed, info="")
        else:
            self.tasks[task] = self.bars.add_task(task, total=total, completed=completed,
                                                  info="")

    def advance(self, task: str, n: int = 1, info: str = "") -> None:
        if self.bars is None or task not in self.tasks:
            return
        bar = self.tasks[task]
        self.bars.advance(bar, n)
        if not info and task.startswith("features"):
            speed = self.bars.tasks[bar].speed
            info = f"{speed:.0f} posters/s" if speed else ""
        self.bars.update(bar, info=info)

    def finish(self, task: str) -> None:
        pass

    def close(self) -> None:
        if self.bars is not None:
            self.bars.stop()

    def __enter__(self) -> RichProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def progress_bar(total: int, label: str = "predicting") -> Iterator[Callable[[int], None]]:
    """A transient bar for long lists (or any list on a terminal); yields `advance(n)`."""
    shown = total > 1 and (sys.stderr.isatty() or total >= LONG_LIST)
    with RichProgress(shown, transient=True) as bars:
        bars.start(label, total)
        yield lambda n: bars.advance(label, n)
