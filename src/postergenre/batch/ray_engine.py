"""The batch job on a Ray cluster (`postergenre batch --engine ray`): the same rows, statuses
and Parquet parts as the local engine (`batch.local`), with the work spread by Ray Data.

    driver: read_rows (catalogue.py) -> rows not yet done, in windows of WINDOW_ROWS
      -> Ray Data: fetch + decode in tasks (`_decode`: fetch_many, load_image)
                -> score in an actor pool (`_Score`: the run loaded once per actor)
      -> driver: Output.write_part, an atomic part per `part_rows` rows (or PART_SECONDS)

The driver reads the catalogue itself and hands Ray Data the rows (`ray.data.from_arrow`)
rather than having Ray read the file: a row's identity (its position) and the duplicate-id
check need one pass in catalogue order, and reading it with the local engine's own code keeps
both engines' rows identical. It also means the catalogue only needs to be readable by the
driver; posters given as paths must be readable by every node (shared storage).

Ray is imported inside `run_ray` only: importing postergenre never starts or configures Ray.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from postergenre.batch import BATCH_SIZE, PART_ROWS
from postergenre.batch import catalogue as cat
from postergenre.batch.catalogue import Columns, Row, Summary
from postergenre.batch.local import PART_SECONDS
from postergenre.data.fetch import FetchConfig, fetch_many, is_url
from postergenre.errors import PosterGenreError
from postergenre.run import Run, load_run

WINDOW_ROWS = 50_000  # rows per Ray Data execution: bounds the driver's memory
DECODE_CPUS = 0.5  # per fetch+decode task: it mostly waits on the network
BLOCK_ROWS = 256  # rows per Ray task and actor call (and the actor's scoring batch): at 32,
# Ray's per-block costs held 1 actor to 0.52x the local engine's rate on 2 cores; 0.62x at 256
CONNECT_TIMEOUT_S = 5.0  # --ray-address must answer within this


# --- the two stages, run on the workers ------------------------------------------------------

_ROW_FIELDS = ("index", "id", "title", "source", "error")


def _rows_table(rows: list[Row]) -> pa.Table:
    """The rows handed to Ray Data: the Row fields as columns (None error -> "")."""
    return pa.table({
        "index": pa.array([r.index for r in rows], pa.int64()),
        "id": pa.array([r.id for r in rows], pa.string()),
        "title": pa.array([r.title for r in rows], pa.string()),
        "source": pa.array([r.source for r in rows], pa.string()),
        "error": pa.array([r.error or "" for r in rows], pa.string()),
    })


def _rows_of(batch: dict[str, np.ndarray]) -> list[Row]:
    """The Rows of a batch. Ray Data hands a column with no strings in the batch (no title
    in any row) over as floats (NaN), so anything that is not a string is None here."""
    return [Row(index=int(i), id=_text(d) or "", title=_text(t), source=_text(s) or "",
                error=_text(e) or None)
            for i, d, t, s, e in zip(*(batch[k] for k in _ROW_FIELDS), strict=True)]


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _decode(batch: dict[str, np.ndarray], *, fetch: FetchConfig, size: tuple[int, int]
            ) -> dict[str, np.ndarray]:
    """A Ray task: fetch the batch's URLs concurrently (`fetch_many`), decode every poster
    (`load_image`); a row that fails keeps a blank image and its one-line error."""
    rows = _rows_of(batch)
    urls = [k for k, r in enumerate(rows) if r.error is None and is_url(r.source)]
    bodies: dict[int, bytes | BaseException] = {
        urls[i]: body for i, body in fetch_many([rows[k].source for k in urls], fetch)}
    errors = [""] * len(rows)
    images = np.zeros((len(rows), *size, 3), np.uint8)
    for k, row in enumerate(rows):
        image = cat.load_image(row, bodies.get(k), size)
        if isinstance(image, str):
            errors[k] = image
        else:
            images[k] = image
    return {**{k: batch[k] for k in _ROW_FIELDS if k != "error"},
            "error": np.array(errors, dtype=object), "image": images}


class _Score:
    """A Ray actor: the run loaded once, then batches of decoded posters scored into output
    rows by `score_rows`, the local engine's own."""

    def __init__(self, model: str | None, backend: str, batch_size: int, top_k: int) -> None:
        from postergenre.predict import Predictor

        self.predictor = Predictor.load(model, backend=backend, batch_size=batch_size)
        self.top_k = top_k

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        images: list[np.ndarray | str] = [
            error or batch["image"][k] for k, error in enumerate(batch["error"])]
        return cat.score_rows(self.predictor, _rows_of(batch), images, top_k=self.top_k)


# --- the driver ------------------------------------------------------------------------------


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise PosterGenreError("--engine ray needs Ray: pip install 'postergenre[ray]'"
                               ) from None
    return ray


@contextlib.contextmanager
def ray_connection(address: str | None, actors: int = 1) -> Iterator[None]:
    """Ray for the length of a job: a Ray already initialised in this process is used as it
    is; with `address`, join that cluster; without, start a local Ray on this machine's cores
    (declaring at least `actors` + 1 CPUs, so that as many actors as cores still leave the
    fetch tasks room: Ray's CPUs are scheduling slots, the OS shares the real ones).
    What this starts it stops. Worker logs stay in Ray's session folder (log_to_driver=False)
    and Ray's own start-up lines stay off the terminal."""
    ray = _import_ray()
    if ray.is_initialized():
        yield
        return
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    try:
        with _quiet_native_logs():
            if address:
                ray.init(address=address, **options)
            else:
                ray.init(num_cpus=max(os.cpu_count() or 1, actors + 1),
                         include_dashboard=False, **options)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"--ray-address {address}" if address else "a local Ray"
        raise PosterGenreError(f"{where}: cannot start or join Ray ({_one_line(e)})") from None
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _quiet_native_logs() -> Iterator[None]:
    """Ray's C++ side of this process logs errors only (RAY_BACKEND_LOG_LEVEL, read when Ray
    starts here) and the one line it prints about that setting goes to /dev/null: file
    descriptor 2 is pointed there for the length of `ray.init` and then put back."""
    saved_level = os.environ.get("RAY_BACKEND_LOG_LEVEL")
    os.environ["RAY_BACKEND_LOG_LEVEL"] = "fatal"
    sys.stderr.flush()
    saved_fd = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        if saved_level is None:
            os.environ.pop("RAY_BACKEND_LOG_LEVEL", None)
        else:
            os.environ["RAY_BACKEND_LOG_LEVEL"] = saved_level


def _check_reachable(address: str) -> None:
    """A HOST:PORT (or ray://HOST:PORT) address must answer within a few seconds (Ray itself
    keeps retrying a dead address for minutes); `auto` and other forms are left to Ray."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise PosterGenreError(
            f"--ray-address {address}: nothing answers there ({e.strerror or e}); start the "
            "cluster's head with `ray start --head` and pass the address it prints") from None


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@contextlib.contextmanager
def _quiet_data(ray: Any) -> Iterator[Any]:
    """Ray Data's context for this job (no progress bars, no INFO lines, rows in catalogue
    order), and its logger at ERROR; both put back afterwards."""
    ctx = ray.data.DataContext.get_current()
    settings = {"enable_progress_bars": False, "print_on_execution_start": False,
                "enable_auto_log_stats": False}
    saved = {k: getattr(ctx, k) for k in settings if hasattr(ctx, k)}
    saved_order = ctx.execution_options.preserve_order
    logger = logging.getLogger("ray.data")
    level = logger.level
    for k in saved:
        setattr(ctx, k, settings[k])
    ctx.execution_options.preserve_order = True
    logger.setLevel(logging.ERROR)
    try:
        yield ctx
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)
        ctx.execution_options.preserve_order = saved_order
        logger.setLevel(level)


@dataclass(frozen=True)
class _Stages:
    """The Ray Data pipeline of one job: tasks that fetch and decode, actors that score."""

    model: str | None
    backend: str
    fetch: FetchConfig
    size: tuple[int, int]
    batch_size: int
    top_k: int
    actors: int
    part_rows: int

    def run(self, ray: Any, rows: list[Row]) -> Iterator[pa.Table]:
        """One Ray Data execution over `rows`: output tables of one batch each, in order."""
        table = _rows_table(rows)
        # rows per Ray task and actor call: never more than a part, so parts keep their pace
        step = min(max(self.batch_size, BLOCK_ROWS), max(self.part_rows, self.batch_size))
        blocks = [table.slice(i, step) for i in range(0, len(table), step)]
        ds = (ray.data.from_arrow(blocks)
              .map_batches(_decode, fn_kwargs={"fetch": self.fetch, "size": self.size},
                           batch_size=step, batch_format="numpy", num_cpus=DECODE_CPUS)
              .map_batches(_Score, fn_constructor_kwargs={
                               "model": self.model, "backend": self.backend,
                               "batch_size": step, "top_k": self.top_k},
                           compute=ray.data.ActorPoolStrategy(size=self.actors),
                           batch_size=step, batch_format="numpy", num_cpus=1))
        yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")


def run_ray(catalogue: str | os.PathLike, out: str | os.PathLike, *,
            model: str | os.PathLike | None = None, columns: Columns | None = None,
            posters: str | os.PathLike | None = None, retry_failed: bool = False,
            top_k: int = 3, fetch: FetchConfig | None = None, batch_size: int = BATCH_SIZE,
            part_rows: int = PART_ROWS, backend: str = "auto",
            on_progress: Callable[[int], None] | None = None,
            address: str | None = None, actors: int = 1) -> Summary:
    """`run_local`'s job on Ray: the same table in OUT, resumed the same way. Fetching and
    decoding run in Ray tasks, scoring in `actors` actors that each load the model once.
    `address`: the cluster to join (`ray start --head` prints it); None starts a local Ray
    on this machine's cores for the run (a Ray already initialised in this process is used
    as it is). `on_progress(n)`: n more rows finished."""
    start = time.perf_counter()
    if actors < 1:
        raise PosterGenreError(f"--actors must be at least 1, not {actors}")
    ray = _import_ray()  # checked before OUT is touched, as is the address
    if address and not ray.is_initialized():
        _check_reachable(address)
    run = load_run(Path(model) if model is not None else None)
    fetch = fetch or FetchConfig()
    with cat.open_output(catalogue, out, run_dir=run.path, genres=run.genres, columns=columns,
                     posters=posters, retry_failed=retry_failed) as output:
        skipped = len(output.skip)
        if on_progress is not None and skipped:
            on_progress(skipped)
        count = [0]
        todo = _todo(cat.read_rows(catalogue, columns, posters), output.skip, count)
        window = _take(todo, WINDOW_ROWS)
        scored = 0
        if window:  # nothing to do starts no Ray
            _check_model(run, backend, batch_size)
            stage = _Stages(model=None if model is None else str(run.path), backend=backend,
                            fetch=fetch, size=run.input_size, batch_size=batch_size,
                            top_k=top_k, actors=actors, part_rows=part_rows)
            with ray_connection(address, actors), _quiet_data(ray), _ray_errors(ray):
                _check_cpus(ray, actors)
                pending: list[pa.Table] = []
                pending_rows, last_write = 0, time.monotonic()
                while window:
                    tables = stage.run(ray, window)
                    window = []
                    for table in tables:
                        pending.append(table)
                        pending_rows += table.num_rows
                        if on_progress is not None:
                            on_progress(table.num_rows)
                        if (pending_rows >= part_rows
                                or time.monotonic() - last_write >= PART_SECONDS):
                            output.write_part(pa.concat_tables(pending))
                            scored += pending_rows
                            pending, pending_rows, last_write = [], 0, time.monotonic()
                    window = _take(todo, WINDOW_ROWS)
                if pending:
                    output.write_part(pa.concat_tables(pending))
                    scored += pending_rows
        output.finish()
        return Summary(Path(out), count[0], skipped, scored, len(output.failed),
                       time.perf_counter() - start)


@contextlib.contextmanager
def _ray_errors(ray: Any) -> Iterator[None]:
    """A failure inside Ray (an actor or node lost, a worker's exception) as one line; the
    parts written before it stay, so a rerun resumes after them."""
    try:
        yield
    except ray.exceptions.RayError as e:
        cause = e
        while getattr(cause, "cause", None) is not None and cause.cause is not cause:
            cause = cause.cause
        raise PosterGenreError(f"the Ray job failed ({type(cause).__name__}: "
                               f"{_one_line(cause)}); the rows written so far are kept: "
                               "rerun to go on from there") from None


def _todo(chunks: Iterator[list[Row]], skip: set[int], count: list[int]) -> Iterator[Row]:
    """The rows not yet in the table, in catalogue order; `count[0]`: rows read so far."""
    for chunk in chunks:
        count[0] += len(chunk)
        yield from (row for row in chunk if row.index not in skip)


def _take(rows: Iterator[Row], n: int) -> list[Row]:
    return [row for _, row in zip(range(n), rows, strict=False)]


def _check_model(run: Run, backend: str, batch_size: int) -> None:
    """Load the model once here, so that a run or backend that cannot be used is refused in
    one line before any actor starts (each actor would fail the same way, noisily); this also
    builds the cached ONNX graph that the actors on this machine then read."""
    from postergenre.predict import Predictor

    Predictor(run, backend=backend, batch_size=batch_size)


def _check_cpus(ray: Any, actors: int) -> None:
    """Each scoring actor holds a CPU; fetching and decoding need some left over."""
    cpus = ray.cluster_resources().get("CPU", 0)
    if actors + DECODE_CPUS > cpus:
        raise PosterGenreError(
            f"--actors {actors}: the Ray cluster has {cpus:g} CPUs; each actor takes one and "
            "fetching needs at least one more")
