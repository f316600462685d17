"""A small dynamic batcher: concurrent requests share one model call, off the event loop.

One worker thread owns the model. Each request puts its (n, 3, H, W) array on a queue and
awaits a future; the worker takes everything waiting (up to `max_batch` images), runs the model
once and hands each request its rows back. With one request in flight nothing waits; under load
the batches grow by themselves while the previous one is being scored.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

_STOP = object()


class Batcher:
    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], max_batch: int = 32) -> None:
        self.fn = fn
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="postergenre-batcher",
                                                daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Finish the queued work and stop the worker."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                self._queue.put(_STOP)
                self._thread.join()
            self._thread = None

    def submit(self, x: np.ndarray) -> Future:
        """Queue one request's images; the future resolves to their (n, G) outputs."""
        self.start()
        future: Future = Future()
        self._queue.put((x, future))
        return future

    async def __call__(self, x: np.ndarray) -> np.ndarray:
        return await asyncio.wrap_future(self.submit(x))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            items, size, stop = [item], len(item[0]), False
            while size < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                items.append(item)
                size += len(item[0])
            self._run(items)
            if stop:
                return

    def _run(self, items: list[tuple[np.ndarray, Future]]) -> None:
        items = [(x, f) for x, f in items if f.set_running_or_notify_cancel()]
        if not items:
            return
        try:
            out = self.fn(np.concatenate([x for x, _ in items]))
        except Exception as e:  # handed to every waiting request
            for _, f in items:
                f.set_exception(e)
            return
        start = 0
        for x, f in items:
            f.set_result(out[start : start + len(x)])
            start += len(x)
