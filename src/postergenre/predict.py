"""Load a run (or the shipped model) and score posters: `Predictor.load(run).predict_proba(x)`
takes (N, 3, H, W) floats in [0, 1] and returns (N, n_genres) probabilities.

Around it, what `postergenre predict` needs: inputs from files, folders and URLs, titles by the
imdbId in a file name, batched prediction overlapped with decoding (`predict_stream`), and the
table / JSON-lines / CSV output formats.
"""

from __future__ import annotations

import json
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from postergenre.backends import BACKENDS, OnnxBackend, TorchBackend, onnx_available
from postergenre.data.images import (
    IMAGE_SUFFIXES,
    PosterSource,
    load_poster_array,
    load_poster_batch,
)
from postergenre.errors import InvalidImageError, PosterGenreError
from postergenre.run import Run, load_run

if TYPE_CHECKING:  # the onnx path imports no torch
    import httpx
    import torch


def make_backend(run: Run, backend: str = "auto", device: str = "cpu"):
    """The run's model behind one of `BACKENDS` (backends.py): for onnx, the run's checked
    int8 graph when it has one (and `backend` is not 'onnx-fp32'), else its fp32 graph."""
    if backend not in BACKENDS:
        raise PosterGenreError(f"--backend must be one of {', '.join(BACKENDS)}, "
                               f"not {backend!r}")
    if backend.startswith("onnx") or (backend == "auto" and device == "cpu"
                                      and onnx_available()):
        from postergenre.export import cached_onnx, checked_int8

        int8 = checked_int8(run) if backend != "onnx-fp32" else None
        return OnnxBackend(int8 or cached_onnx(run), int8=int8 is not None)
    return TorchBackend(run.build_model(device), device)


class Predictor:
    """A loaded model: genres, tuned thresholds, and probabilities for posters."""

    def __init__(self, run: Run, backend: str = "auto", device: str = "cpu",
                 batch_size: int = 64) -> None:
        self.run = run
        self.genres: list[str] = run.genres
        self.thresholds = np.array([run.thresholds.get(g, 0.5) for g in self.genres],
                                   dtype=np.float32)
        self.input_size: tuple[int, int] = run.input_size
        self.batch_size = batch_size
        self.backend = make_backend(run, backend, device)
        self.text = load_text_side(run)  # None unless the run has a title model (RUN/text/)

    @classmethod
    def load(cls, run: str | Path | None = None, **kwargs) -> Predictor:
        """Load a run directory; None loads the model shipped with the package."""
        return cls(load_run(run), **kwargs)

    def predict_proba(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N, 3, H, W) float in [0, 1] -> (N, n_genres) probabilities."""
        x = np.asarray(images, np.float32)  # a CPU torch tensor converts without a copy
        out = [self.backend(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.genres)), np.float32)

    def load_batch(self, sources: Sequence[PosterSource]) -> np.ndarray:
        """Decode and resize posters into one (N, 3, H, W) float32 array in [0, 1]."""
        return load_poster_batch(sources, self.input_size)

    def predict_files(self, sources: Sequence[PosterSource],
                      titles: Sequence[str | None] | None = None) -> np.ndarray:
        """Probabilities for poster files or bytes (raises InvalidImageError for a bad one);
        with `titles` (one per source, None or "" for none) and a run with a title model,
        the rows with a title are fused with it (`fuse`)."""
        probs = self.predict_proba(self.load_batch(sources))
        return probs if titles is None else self.fuse(probs, titles)[0]

    def fuse(self, probabilities: np.ndarray, titles: Sequence[str | None]
             ) -> tuple[np.ndarray, np.ndarray]:
        """Poster probabilities fused with the title model for rows with a non-empty title:
        (probabilities, (n,) bool which rows were fused). Rows without a title, and every row
        when the run has no title model, are returned unchanged."""
        if len(titles) != len(probabilities):
            raise PosterGenreError(f"{len(titles)} titles for {len(probabilities)} posters")
        used = np.array([self.text is not None and bool(t and t.strip()) for t in titles], bool)
        out = np.array(probabilities, copy=True)
        if used.any():
            model, fusion, _ = self.text
            rows = np.flatnonzero(used)
            text_logits = model.decision_function([titles[i] for i in rows])
            out[rows] = fusion(out[rows], text_logits)
        return out, used

    def top_k(self, probabilities: np.ndarray, k: int = 3) -> list[list[tuple[str, float]]]:
        """The k best genres of each row, best first."""
        order = np.argsort(-probabilities, axis=1)[:, :k]
        return [
            [(self.genres[j], float(p[j])) for j in row]
            for row, p in zip(order, probabilities, strict=True)
        ]

    def over_threshold(self, probabilities: np.ndarray, fused: np.ndarray | None = None
                       ) -> list[list[tuple[str, float]]]:
        """Genres whose probability reaches their tuned threshold, best first (for rows
        marked in `fused`, the thresholds tuned for the fused scores)."""
        result = []
        for i, p in enumerate(probabilities):
            thr = self.thresholds
            if fused is not None and fused[i] and self.text is not None:
                thr = self.text[2]
            hits = [(self.genres[j], float(p[j])) for j in np.flatnonzero(p >= thr)]
            result.append(sorted(hits, key=lambda t: -t[1]))
        return result


def load_text_side(run: Run):
    """(TitleModel, Fusion, fused thresholds) of a run with a title model, else None."""
    meta = run.config.get("text")
    if not meta:
        return None
    from postergenre.models.text import Fusion, TitleModel

    folder = run.path / meta.get("folder", "text")
    model, fusion = TitleModel.load(folder), Fusion.load(folder)
    if model.genres != run.genres or fusion.genres != run.genres:
        raise PosterGenreError(f"{folder}: the title model's genres differ from the run's")
    path = folder / "thresholds.json"
    saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return model, fusion, np.array([saved.get(g, 0.5) for g in run.genres], np.float32)


# --- inputs: files, folders, URLs ----------------------------------------------------------

URL_TIMEOUT_S = 15.0  # the longest wait for any one read (connect, headers, a body chunk)
URL_DEADLINE_S = 30.0  # the longest a whole URL download may take, however the bytes trickle
MAX_URL_BYTES = 20 * 1024 * 1024


def is_url(text: str | os.PathLike) -> bool:
    return isinstance(text, str) and text.lower().startswith(("http://", "https://"))


def expand_inputs(inputs: Sequence[str | os.PathLike],
                  on_error: Callable[[str], None] | None = None) -> list[str]:
    """Files and URLs as given; folders replaced by their image files (recursively, sorted).

    Nothing is checked here beyond walking folders: a missing file is reported when it is read.
    A folder without images (or one that cannot be walked) is an error: raised, or, with
    `on_error`, reported through it (one line) while the other inputs are kept.
    """
    out: list[str] = []
    for item in inputs:
        path = Path(item)
        if not is_url(item) and path.is_dir():
            try:
                found = _images_in(path)
            except PosterGenreError as e:
                if on_error is None:
                    raise
                on_error(str(e))
                continue
            out.extend(str(p) for p in found)
        else:
            out.append(str(item))
    return out


def _images_in(folder: Path) -> list[Path]:
    found: list[Path] = []
    try:
        for root, _, names in os.walk(folder, onerror=_raise):  # links to folders not followed
            found += [p for n in names if (p := Path(root, n)).suffix.lower() in IMAGE_SUFFIXES
                      and p.is_file()]
    except OSError as e:
        raise PosterGenreError(f"{folder}: cannot read the folder ({e.strerror})") from None
    if not found:
        raise PosterGenreError(f"{folder}: folder holds no poster images")
    return sorted(found)


def _raise(error: OSError) -> None:
    raise error


def fetch_url(url: str, timeout: float = URL_TIMEOUT_S, max_bytes: int = MAX_URL_BYTES,
              client: httpx.Client | None = None, deadline: float = URL_DEADLINE_S) -> bytes:
    """Download an image URL (redirects followed), refusing bodies over `max_bytes`.

    `timeout` bounds each read; `deadline` bounds the whole download (a server that trickles
    a byte a second is given up on after `deadline` seconds). Every failure is an
    InvalidImageError naming the URL.
    """
    box: dict[str, object] = {}
    stop = threading.Event()

    def work() -> None:
        try:
            box["data"] = _fetch(url, timeout, max_bytes, client, stop)
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    # A daemon thread: a server that trickles its headers cannot hold up the process's exit.
    worker = threading.Thread(target=work, name="fetch-url", daemon=True)
    worker.start()
    worker.join(deadline)
    if worker.is_alive():
        stop.set()  # the worker gives up at its next chunk
        raise InvalidImageError(f"{url}: download took longer than {deadline:g} s (deadline)")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["data"]  # type: ignore[return-value]


def _fetch(url: str, timeout: float, max_bytes: int, client: httpx.Client | None,
           stop: threading.Event) -> bytes:
    import httpx

    try:
        with (client or httpx).stream("GET", url, timeout=timeout, follow_redirects=True) as r:
            if r.status_code != 200:
                raise InvalidImageError(f"{url}: HTTP {r.status_code}")
            declared = r.headers.get("content-length") or ""
            if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
                raise InvalidImageError(f"{url}: larger than {max_bytes:,} bytes")
            data = bytearray()
            for chunk in r.iter_bytes():
                data += chunk
                if len(data) > max_bytes:
                    raise InvalidImageError(f"{url}: larger than {max_bytes:,} bytes")
                if stop.is_set():
                    raise InvalidImageError(f"{url}: deadline passed")
            return bytes(data)
    except httpx.TimeoutException:
        raise InvalidImageError(f"{url}: timed out after {timeout:g} s") from None
    except httpx.InvalidURL as e:
        raise InvalidImageError(f"{url}: malformed URL ({e})") from None
    except httpx.HTTPError as e:
        raise InvalidImageError(f"{url}: unreachable ({type(e).__name__})") from None
    except (ValueError, UnicodeError) as e:  # what the URL parser and IDNA raise
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InvalidImageError(f"{url}: malformed URL ({reason})") from None


# --- titles -------------------------------------------------------------------------------


def load_titles(labels: str | os.PathLike | None = None, run: Run | None = None) -> dict[int, str]:
    """imdbId -> title, from a labels CSV (MovieGenre.csv or imdbId,Title,Genre) and/or the
    splits of the dataset the run was trained on (its config's "dataset", when still present)."""
    titles: dict[int, str] = {}
    dataset = run.dataset if run is not None else None
    if dataset and Path(dataset).is_dir():
        from postergenre.data.dataset import SPLITS, load_split

        for name in SPLITS:
            try:
                split = load_split(dataset, name)
            except PosterGenreError:
                continue
            titles.update((int(i), t) for i, t in zip(split.ids, split.titles, strict=True) if t)
    if labels is not None:
        titles.update(read_titles(labels)[0])
    return titles


def read_titles(path: str | os.PathLike) -> tuple[dict[int, str], list[str]]:
    """imdbId -> title from a labels CSV (MovieGenre.csv or imdbId,Title,Genre), and one line
    for each row that cannot be used (no integer imdbId, no title); those rows are skipped."""
    import pandas as pd

    from postergenre.data.movies import read_labels

    labels = read_labels(path)
    titles: dict[int, str] = {}
    bad: list[str] = []
    for row, i, title in zip(labels.table["row"], labels.table["imdbId"],
                             labels.table["title"], strict=True):
        if i is None or i is pd.NA:
            bad.append(f"{path}: row {row}: no integer imdbId")
        elif not title:
            bad.append(f"{path}: row {row}: no title")
        else:
            titles[int(i)] = title
    return titles, bad


def file_name(source: str) -> str:
    """The last part of a path or URL (query string dropped)."""
    if is_url(source):
        return source.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or source
    return Path(source).name


def imdb_id(source: str) -> int | None:
    """The IMDB id in a poster's file name (`114709.jpg`, `tt0114709.jpg`), else None."""
    stem = file_name(source).rsplit(".", 1)[0].removeprefix("tt")
    return int(stem) if stem.isascii() and stem.isdigit() else None  # '²³'.isdigit() is True


def title_of(source: str, titles: dict[int, str]) -> str | None:
    return titles.get(imdb_id(source))  # type: ignore[arg-type]


# --- streaming prediction -----------------------------------------------------------------


@dataclass
class Prediction:
    """One input's result: probabilities (n_genres,), or the one-line reason it failed."""

    source: str
    probabilities: np.ndarray | None = None
    error: str | None = None
    fused: bool = False  # the probabilities fuse the poster with its title


def _decode(source: str, size: tuple[int, int]) -> np.ndarray | str:
    try:
        data = fetch_url(source) if is_url(source) else source
        return load_poster_array(data, size)
    except PosterGenreError as e:
        message = str(e)
        if is_url(source) and message.startswith("uploaded bytes: "):
            message = f"{source}: {message.removeprefix('uploaded bytes: ')}"
        return message


def predict_stream(predictor: Predictor, sources: Sequence[str], workers: int = 2,
                   on_done: Callable[[int], None] | None = None,
                   titles: dict[str, str] | None = None) -> Iterator[Prediction]:
    """Predictions for files and URLs, in input order, one batch at a time.

    Posters are decoded (and URLs fetched) in a thread pool while the model scores the
    previous batch; a bad input yields a Prediction with `error` set, the others go on.
    `titles` (source -> title) are fused a batch at a time (`Predictor.fuse`).
    `on_done(n)` is called after each batch with its size (for a progress bar).
    """
    size, bs = predictor.input_size, predictor.batch_size
    batches = [list(sources[i : i + bs]) for i in range(0, len(sources), bs)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque[list[Future]] = deque()
        for batch in batches[:2]:  # decode one batch ahead of the model
            pending.append([pool.submit(_decode, s, size) for s in batch])
        for i, batch in enumerate(batches):
            decoded = [f.result() for f in pending.popleft()]
            if i + 2 < len(batches):
                pending.append([pool.submit(_decode, s, size) for s in batches[i + 2]])
            good = [j for j, d in enumerate(decoded) if not isinstance(d, str)]
            probs = np.zeros((0, len(predictor.genres)), np.float32)
            if good:
                x = np.stack([decoded[j] for j in good]).transpose(0, 3, 1, 2)
                probs = predictor.predict_proba(x.astype(np.float32) / 255.0)
            fused = np.zeros(len(good), bool)
            if titles:
                probs, fused = predictor.fuse(probs, [titles.get(batch[j]) for j in good])
            row = dict(zip(good, zip(probs, fused, strict=True), strict=True))
            for j, source in enumerate(batch):
                d = decoded[j]
                yield (Prediction(source, error=d) if isinstance(d, str)
                       else Prediction(source, probabilities=row[j][0], fused=bool(row[j][1])))
            if on_done is not None:
                on_done(len(batch))


# --- output formats -----------------------------------------------------------------------

FORMATS = ("table", "json", "csv")


def format_table_row(name: str, top: list[tuple[str, float]], width: int = 0) -> str:
    """`The Pianist (2002)   Drama (0.71), War (0.43), History (0.40)`"""
    genres = ", ".join(f"{g} ({p:.2f})" for g, p in top) or "(no genre over its threshold)"
    return f"{name:<{width}}   {genres}"


def json_record(source: str, title: str | None, top: list[tuple[str, float]],
                probabilities: np.ndarray, genres: Sequence[str],
                signals: Sequence[str] | None = None) -> str:
    """One JSON object per line: path, title (null when unknown), top genres, every score;
    `signals` (["poster"] or ["poster", "title"]) when titles were asked for."""
    record = {
        "path": source,
        "title": title,
        "top": [[g, round(p, 4)] for g, p in top],
        "scores": {g: round(float(p), 4) for g, p in zip(genres, probabilities, strict=True)},
    }
    if signals is not None:
        record["signals"] = list(signals)
    return json.dumps(record, ensure_ascii=False)


def csv_header(genres: Sequence[str]) -> list[str]:
    return ["path", "title", "top", *genres]


def csv_row(source: str, title: str | None, top: list[tuple[str, float]],
            probabilities: np.ndarray) -> list[str]:
    """path, title, top genres as 'Drama|War|History', then one score per genre."""
    return [source, title or "", "|".join(g for g, _ in top),
            *(f"{p:.4f}" for p in probabilities)]
