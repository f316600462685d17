"""The batch job on this machine: a streamed pipeline from a catalogue to the output table.

    reader thread   catalogue rows not yet in the table (`read_rows`), in order
        |  URLs ------> fetch_many (data/fetch.py: concurrent, bounded, in input order)
        v               |
    pairing thread  each row with its fetched bytes (or its file) -> decode pool (threads)
        v
    main thread     batches of decoded posters -> `score_rows` -> a part every `part_rows`

Every queue between the stages is bounded, so memory does not grow with the catalogue (only
the row indices in the table and the ids seen do: ~200 bytes a row). Posters are fetched and
decoded ahead of the model, so scoring waits on the network only when the network is the
slower side.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa

from postergenre.batch import BATCH_SIZE, PART_ROWS
from postergenre.batch.catalogue import (
    Columns,
    Output,
    Row,
    Summary,
    load_image,
    open_output,
    read_rows,
    score_rows,
)
from postergenre.data.fetch import FetchConfig, fetch_many, is_url

PART_SECONDS = 60.0  # ... or a part at least this often, however slow the posters come
DECODE_WORKERS = 2

_END = object()


class _Failed:
    """An exception of a helper thread, handed down the pipeline to the main thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put unless the run is stopping (never blocks a stopping run forever)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    """Get, or _END once the run is stopping."""
    while not stop.is_set():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue
    return _END


def run_local(catalogue: str | os.PathLike, out: str | os.PathLike, *,
              model: str | os.PathLike | None = None, columns: Columns | None = None,
              posters: str | os.PathLike | None = None, retry_failed: bool = False,
              top_k: int = 3, fetch: FetchConfig | None = None, batch_size: int = BATCH_SIZE,
              part_rows: int = PART_ROWS, workers: int = DECODE_WORKERS, backend: str = "auto",
              on_progress: Callable[[int], None] | None = None) -> Summary:
    """Score every catalogue row not yet in OUT's table and add them to it (see
    `batch.catalogue` for the catalogue, the table and resuming). `model` is a run folder
    (None: the shipped model); `on_progress(n)` is called with the number of rows just
    finished (at the start, the rows skipped as already done)."""
    from postergenre.predict import Predictor
    from postergenre.run import load_run

    start = time.perf_counter()
    run = load_run(Path(model) if model is not None else None)
    fetch = fetch or FetchConfig()
    with open_output(catalogue, out, run_dir=run.path, genres=run.genres, columns=columns,
                     posters=posters, retry_failed=retry_failed) as output:
        predictor = Predictor(run, backend=backend, batch_size=batch_size)
        skipped = len(output.skip)
        if on_progress is not None and skipped:
            on_progress(skipped)
        total, scored = _pipeline(output, predictor, catalogue, columns, posters, top_k, fetch,
                                  batch_size, part_rows, workers, on_progress)
        output.finish()
        return Summary(Path(out), total, skipped, scored, len(output.failed),
                       time.perf_counter() - start)


def _pipeline(output: Output, predictor: Any, catalogue: str | os.PathLike,
              columns: Columns | None, posters: str | os.PathLike | None, top_k: int,
              fetch: FetchConfig, batch_size: int, part_rows: int, workers: int,
              on_progress: Callable[[int], None] | None) -> tuple[int, int]:
    """Run the three stages; return (rows in the catalogue, rows written)."""
    stop = threading.Event()
    rows_q: queue.Queue = queue.Queue(maxsize=max(4 * fetch.concurrency, 2 * batch_size))
    urls_q: queue.Queue = queue.Queue()  # never longer than rows_q (URLs go in just before)
    ready_q: queue.Queue = queue.Queue(maxsize=2 * batch_size)
    count = [0]  # rows read from the catalogue
    skip, size = output.skip, predictor.input_size

    def reader() -> None:
        try:
            for chunk in read_rows(catalogue, columns, posters):
                count[0] += len(chunk)
                for row in chunk:
                    if row.index in skip:
                        continue
                    url = row.error is None and is_url(row.source)
                    if url:
                        urls_q.put(row.source)
                    if not _put(rows_q, (row, url), stop):
                        return
        except BaseException as e:
            _put(rows_q, _Failed(e), stop)
        finally:
            urls_q.put(_END)
            _put(rows_q, _END, stop)

    def pairing() -> None:
        fetched = fetch_many(iter(urls_q.get, _END), fetch)
        try:
            with ThreadPoolExecutor(max(1, workers), thread_name_prefix="decode") as pool:
                while not stop.is_set():
                    item = _get(rows_q, stop)
                    if item is _END or isinstance(item, _Failed):
                        _put(ready_q, item, stop)
                        return
                    row, url = item
                    body = next(fetched)[1] if url else None
                    future = pool.submit(load_image, row, body, size)
                    if not _put(ready_q, (row, future), stop):
                        return
        except BaseException as e:
            _put(ready_q, _Failed(e), stop)
        finally:
            if isinstance(fetched, Generator):  # ends its event loop and requests in flight
                fetched.close()

    threads = [threading.Thread(target=reader, name="batch-read", daemon=True),
               threading.Thread(target=pairing, name="batch-fetch", daemon=True)]
    for t in threads:
        t.start()
    scored, pending, pending_rows = 0, [], 0
    last_write = time.monotonic()
    try:
        finished = False
        while not finished:
            rows: list[Row] = []
            futures: list[Future] = []
            while len(rows) < batch_size:
                item = ready_q.get()
                if item is _END:
                    finished = True
                    break
                if isinstance(item, _Failed):
                    raise item.error
                rows.append(item[0])
                futures.append(item[1])
            if rows:
                table = score_rows(predictor, rows, [f.result() for f in futures], top_k)
                pending.append(table)
                pending_rows += len(rows)
                if on_progress is not None:
                    on_progress(len(rows))
            if pending and (finished or pending_rows >= part_rows
                            or time.monotonic() - last_write >= PART_SECONDS):
                output.write_part(pa.concat_tables(pending))
                scored += pending_rows
                pending, pending_rows, last_write = [], 0, time.monotonic()
    finally:
        stop.set()
    for t in threads:
        t.join(timeout=5)
    return count[0], scored
