"""A catalogue in, a table of genres out: what both batch engines share.

A **catalogue** is a CSV or Parquet table with one movie per row (an id, a poster URL or path,
optionally a title; MovieGenre.csv as it is), or a folder of posters (id = file stem). It is
read as a stream of `Row`s (`read_rows`), never whole. Each row's problems that are known before
any poster is read (no id, an id seen before, no poster) are set on the row up front, so that
the row still appears in the output with its status.

The **output folder** (`Output`) holds the table as Parquet parts, each written atomically, plus
two files whose names start with `_` so that `pandas.read_parquet(OUT)` reads only the parts:

    OUT/part-000000.parquet ...  rows of the table (see `output_schema`)
    OUT/_manifest.json           the catalogue and the model the table was made from
    OUT/_lock                    held (flock) by the run writing here; the OS drops it on kill
    OUT/_table.csv | .jsonl      the whole table in one file, when asked for (`export`)

Every catalogue row is in the table at most once at every moment, and exactly once when a run
has finished: a rerun skips the rows already written (resume), `retry_failed` rewrites the parts
holding failed rows with the retried rows in their place.

`load_image` and `score_rows` turn rows into output rows; both engines call them, so both give
the same rows and the same scores.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from postergenre.data.fetch import is_url
from postergenre.data.movies import decode_lines
from postergenre.errors import DatasetError, PosterGenreError
from postergenre.io import atomic_open, atomic_write_json
from postergenre.run import model_fingerprint

if TYPE_CHECKING:
    import pandas as pd

    from postergenre.predict import Predictor

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
OK = "ok"

# Column names recognised by default, matched case- and space-blind, first found wins
# (MovieGenre.csv: imdbId, Title, Poster; a prepared dataset's splits: imdbId, title, poster).
ID_COLUMNS = ("imdbId", "id")
POSTER_COLUMNS = ("Poster", "poster_url", "path", "url")
TITLE_COLUMNS = ("Title",)


# --- reading a catalogue ------------------------------------------------------------------


@dataclass(frozen=True)
class Columns:
    """Which columns of a table hold the id, the poster (URL or path) and the title; None:
    found by name (`ID_COLUMNS`, `POSTER_COLUMNS`, `TITLE_COLUMNS`) in the table's header."""

    id: str | None = None
    poster: str | None = None
    title: str | None = None


@dataclass(frozen=True)
class Row:
    """One catalogue row. `index` is its 0-based position among the data rows of the
    catalogue: the row's identity in the output (column `row`) and for resuming. `source` is
    the URL or path its poster is read from; `error` is set when the row cannot be scored
    whatever its poster (no id, a duplicate id, no poster)."""

    index: int
    id: str
    title: str | None
    source: str
    error: str | None = None


def _key(name: str) -> str:
    return "".join(name.split()).lower()


def _find(header: Sequence[str], wanted: str | None, defaults: Sequence[str], path: Path,
          option: str) -> str | None:
    keys = {_key(h): h for h in reversed(header)}  # the first of equal names wins
    if wanted is not None:
        if _key(wanted) not in keys:
            raise DatasetError(f"{path}: no column {wanted!r} ({option}); it has "
                               f"{', '.join(map(repr, header)) or 'no columns'}")
        return keys[_key(wanted)]
    return next((keys[_key(d)] for d in defaults if _key(d) in keys), None)


def resolve_columns(header: Sequence[str], columns: Columns | None, path: Path,
                    posters: Path | None = None) -> Columns:
    """The header's actual names for the id, poster and title columns (one-line errors for
    a named column that is missing, no id column, or no poster column and no `posters`)."""
    c = columns or Columns()
    resolved = Columns(
        id=_find(header, c.id, ID_COLUMNS, path, "--id-column"),
        poster=_find(header, c.poster, POSTER_COLUMNS, path, "--poster-column"),
        title=_find(header, c.title, TITLE_COLUMNS, path, "--title-column"),
    )
    if resolved.id is None:
        raise DatasetError(f"{path}: no id column ({' or '.join(ID_COLUMNS)}); "
                           "name one with --id-column")
    if resolved.poster is None and posters is None:
        raise DatasetError(f"{path}: no poster column ({' or '.join(POSTER_COLUMNS)}); "
                           "name one with --poster-column, or give --posters DIR")
    return resolved


def _kind(path: Path) -> str:
    if path.is_dir():
        return "folder"
    if not path.is_file():
        raise DatasetError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DatasetError(f"{path}: not a catalogue (a .csv or .parquet table, or a folder "
                           "of posters)")
    return "csv" if suffix == ".csv" else "parquet"


def _csv_records(path: Path) -> Iterator[list[str]]:
    """The CSV's records, decoded line by line as `data.movies` does (UTF-8, else
    Windows-1252: MovieGenre.csv mixes both); blank lines skipped."""
    with path.open("rb") as f:
        lines = (decode_lines(line)[0] for line in f)
        try:
            for record in csv.reader(lines):
                if record:
                    yield record
        except csv.Error as e:
            raise DatasetError(f"{path}: not a readable CSV ({e})") from None


def _parquet_file(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DatasetError(f"{path}: not a readable Parquet file "
                           f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                           ) from None


def _text(value: Any) -> str:
    """A cell as text: None -> '', 3500478.0 -> '3500478'."""
    if value is None:
        return ""
    if isinstance(value, float):
        if value != value:  # NaN
            return ""
        if value.is_integer():
            return str(int(value))
    return str(value).strip()


def read_header(path: str | os.PathLike) -> list[str]:
    """The column names of a CSV or Parquet catalogue ([] for a folder)."""
    path = Path(path)
    kind = _kind(path)
    if kind == "folder":
        return []
    if kind == "parquet":
        return list(_parquet_file(path).schema_arrow.names)
    first = next(_csv_records(path), None)
    if first is None:
        raise DatasetError(f"{path}: empty file (no header)")
    return [h.strip() for h in first]


def _table_records(path: Path, kind: str, names: list[str | None], chunk_rows: int
                   ) -> Iterator[list[list[str]]]:
    """Chunks of records, each the cells of `names` as text ('' for a None name)."""
    if kind == "parquet":
        file = _parquet_file(path)
        wanted = sorted({n for n in names if n is not None})
        for batch in file.iter_batches(batch_size=chunk_rows, columns=wanted):
            cols = {n: batch.column(n).to_pylist() for n in wanted}
            yield [[_text(cols[n][i]) if n is not None else "" for n in names]
                   for i in range(batch.num_rows)]
        return
    records = _csv_records(path)
    header = [h.strip() for h in next(records, [])]
    at: dict[str, int] = {}
    for i, h in enumerate(header):
        at.setdefault(h, i)
    positions = [at[n] if n is not None else None for n in names]
    chunk: list[list[str]] = []
    for record in records:
        chunk.append([record[p].strip() if p is not None and p < len(record) else ""
                      for p in positions])
        if len(chunk) >= chunk_rows:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _poster_files(folder: Path) -> Iterator[Path]:
    """Image files under `folder`, recursively, in a stable order (sorted at each level)."""
    from postergenre.data.images import IMAGE_SUFFIXES  # lazily: it imports torch

    for root, dirs, names in os.walk(folder, onerror=_raise):
        dirs.sort()
        for name in sorted(names):
            p = Path(root, name)
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                yield p


def _raise(error: OSError) -> None:
    raise DatasetError(f"{error.filename}: cannot read the folder ({error.strerror})")


def read_rows(path: str | os.PathLike, columns: Columns | None = None,
              posters: str | os.PathLike | None = None, chunk_rows: int = 1024
              ) -> Iterator[list[Row]]:
    """The catalogue's rows, `chunk_rows` at a time, streamed (never the whole table).

    A row's poster is `<posters>/<id>.jpg` when `posters` is given and that file exists (a
    folder made by `data download`), else its poster column (a URL, or a path relative to the
    catalogue's folder). Rows without an id, with an id seen on an earlier row, or without a
    poster get `error` set; they are still yielded.
    """
    path = Path(path)
    kind = _kind(path)
    poster_dir = Path(posters) if posters is not None else None
    if poster_dir is not None and not poster_dir.is_dir():
        raise DatasetError(f"{poster_dir}: --posters is not a folder")
    seen: dict[str, int] = {}
    index = 0

    def make(id_: str, title: str, poster: str) -> Row:
        nonlocal index
        source = ""
        plain = id_ and "/" not in id_ and os.sep not in id_ and not id_.startswith(".")
        if poster_dir is not None and plain and (poster_dir / f"{id_}.jpg").is_file():
            source = os.path.abspath(poster_dir / f"{id_}.jpg")
        elif poster:
            source = poster if is_url(poster) else os.path.abspath(path.parent / poster)
        error = None
        if not id_:
            error = "no id"
        elif id_ in seen:
            error = f"duplicate id, first seen at row {seen[id_]}"
        elif not source and resolved.poster is None and poster_dir is not None:
            error = f"no poster ({poster_dir / (id_ + '.jpg')} not found, no poster column)"
        elif not source:
            error = "no poster (empty poster column)"
        if id_ and id_ not in seen:
            seen[id_] = index
        row = Row(index, id_, title or None, source, error)
        index += 1
        return row

    if kind == "folder":
        resolved = Columns(id=None, poster="path", title=None)
        chunk: list[Row] = []
        for file in _poster_files(path):
            chunk.append(make(file.stem, "", os.path.abspath(file)))
            if len(chunk) >= chunk_rows:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
        return

    resolved = resolve_columns(read_header(path), columns, path, poster_dir)
    names = [resolved.id, resolved.title, resolved.poster]
    for records in _table_records(path, kind, names, chunk_rows):
        yield [make(*record) for record in records]


def count_rows(path: str | os.PathLike) -> int:
    """How many rows `read_rows` yields (Parquet: from its metadata; CSV: one pass)."""
    path = Path(path)
    kind = _kind(path)
    if kind == "folder":
        return sum(1 for _ in _poster_files(path))
    if kind == "parquet":
        return _parquet_file(path).metadata.num_rows
    return max(sum(1 for _ in _csv_records(path)) - 1, 0)


# --- fingerprints: what OUT was made from -------------------------------------------------


def catalogue_fingerprint(path: str | os.PathLike, columns: Columns | None = None,
                          posters: str | os.PathLike | None = None) -> str:
    """The catalogue's identity: sha256 of its bytes and the columns used (a table), or of
    its listing (a folder: each poster's relative path, size and mtime). A copy of the same
    table elsewhere has the same fingerprint; an edited one does not."""
    path = Path(path)
    h = hashlib.sha256()
    if _kind(path) == "folder":
        for file in _poster_files(path):
            st = file.stat()
            h.update(f"{file.relative_to(path)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode(
                "utf-8", "surrogateescape"))
        return f"folder-sha256:{h.hexdigest()}"
    resolved = resolve_columns(read_header(path), columns, path,
                               Path(posters) if posters is not None else None)
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    h.update(json.dumps([resolved.id, resolved.poster, resolved.title]).encode())
    return f"sha256:{h.hexdigest()}"


# --- scoring rows -------------------------------------------------------------------------


def load_image(row: Row, body: bytes | BaseException | None, size: tuple[int, int]
               ) -> np.ndarray | str:
    """The row's poster as a (height, width, 3) uint8 array resized to `size`, through the
    one poster loader; or the row's one-line error. `body` is the fetched bytes of a URL row
    (or the fetch's error), None to read `row.source` as a file."""
    from postergenre.data.images import load_poster_array  # lazily: it imports torch
    if row.error is not None:
        return row.error
    if isinstance(body, BaseException):
        return str(body).splitlines()[0] if str(body) else f"{row.source}: fetch failed"
    if body is None and is_url(row.source):
        return f"{row.source}: not fetched"
    try:
        return load_poster_array(row.source if body is None else body, size)
    except PosterGenreError as e:
        message = str(e)
        if body is not None and message.startswith("uploaded bytes: "):
            message = f"{row.source}: {message.removeprefix('uploaded bytes: ')}"
        return message


FIXED_COLUMNS = ("row", "id", "title", "source", "status", "fused", "top_genres")


def output_schema(genres: Sequence[str]) -> pa.Schema:
    """The output table: `row` (0-based position in the catalogue), `id`, `title` (null when
    none), `source` (the URL or path read), `status` ("ok" or the one-line error), `fused`
    (the title was fused with the poster), `top_genres` (the k best genres, best first,
    joined by '|'; null on failed rows), then one float32 probability column per genre (NaN
    on failed rows)."""
    clash = [g for g in genres if g in FIXED_COLUMNS]
    if clash:
        raise PosterGenreError(f"genre {clash[0]!r} has the name of an output column")
    return pa.schema([
        ("row", pa.int64()), ("id", pa.string()), ("title", pa.string()),
        ("source", pa.string()), ("status", pa.string()), ("fused", pa.bool_()),
        ("top_genres", pa.string()), *((g, pa.float32()) for g in genres),
    ])


def score_rows(predictor: Predictor, rows: Sequence[Row],
               images: Sequence[np.ndarray | str], top_k: int = 3) -> pa.Table:
    """The output rows (`output_schema`) for `rows` and their decoded posters (or errors):
    the good posters scored in one call, fused with their titles when the run has a title
    model (as `predict --titles` does), the k best genres of each."""
    if len(rows) != len(images):
        raise PosterGenreError(f"{len(images)} images for {len(rows)} rows")
    genres = predictor.genres
    good = [i for i, im in enumerate(images) if not isinstance(im, str)]
    probs = np.full((len(rows), len(genres)), np.nan, np.float32)
    fused = np.zeros(len(rows), bool)
    top: list[str | None] = [None] * len(rows)
    if good:
        x = np.stack([images[i] for i in good]).transpose(0, 3, 1, 2)
        p = predictor.predict_proba(x.astype(np.float32) / 255.0)
        p, used = predictor.fuse(p, [rows[i].title for i in good])
        probs[good] = p
        fused[good] = used
        for i, best in zip(good, predictor.top_k(p, top_k), strict=True):
            top[i] = "|".join(g for g, _ in best)
    columns: list[Any] = [
        [r.index for r in rows], [r.id for r in rows], [r.title for r in rows],
        [r.source for r in rows],
        [OK if not isinstance(im, str) else im for im in images],
        fused.tolist(), top, *(probs[:, j] for j in range(len(genres))),
    ]
    schema = output_schema(genres)
    return pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, schema,
                                                                           strict=True)],
                                schema=schema)


# --- the output folder --------------------------------------------------------------------

MANIFEST = "_manifest.json"
LOCK = "_lock"
PART_PREFIX = "part-"
EXPORTS = {"csv": "_table.csv", "jsonl": "_table.jsonl"}
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Manifest:
    """OUT/_manifest.json: what the table in OUT was made from."""

    catalogue: str  # the catalogue's path when the table was started
    catalogue_fingerprint: str
    model: str  # the run folder
    model_fingerprint: str
    genres: tuple[str, ...]
    version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "catalogue": self.catalogue,
                "catalogue_fingerprint": self.catalogue_fingerprint, "model": self.model,
                "model_fingerprint": self.model_fingerprint, "genres": list(self.genres)}

    @classmethod
    def read(cls, path: Path) -> Manifest:
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            return cls(d["catalogue"], d["catalogue_fingerprint"], d["model"],
                       d["model_fingerprint"], tuple(d["genres"]), int(d["version"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PosterGenreError(f"{path}: not a batch manifest ({type(e).__name__}: {e})"
                                   ) from None


@dataclass(frozen=True)
class Summary:
    """What a batch run did."""

    out: Path
    rows: int  # rows in the catalogue
    skipped: int  # already in the table (resume): not scored again
    scored: int  # rows written by this run, ok or not
    failed: int  # rows of the whole table whose status is not "ok"
    seconds: float


def check_out(out: str | os.PathLike, catalogue: str | os.PathLike,
              posters: str | os.PathLike | None = None) -> None:
    """Refuse an OUT that is, or lies inside, one of the run's inputs."""
    o = Path(out).resolve()
    for name, p in (("the catalogue", catalogue), ("--posters", posters)):
        if p is None:
            continue
        q = Path(p).resolve()
        if o == q or (q.is_dir() and q in o.parents):
            raise PosterGenreError(f"{out}: --out is inside {name} ({p}); choose another folder")


def open_output(catalogue: str | os.PathLike, out: str | os.PathLike, *,
                run_dir: str | os.PathLike, genres: Sequence[str], columns: Columns | None = None,
                posters: str | os.PathLike | None = None, retry_failed: bool = False) -> Output:
    """What both engines do first: check OUT is not an input, fingerprint the catalogue and
    the model, and open (lock) OUT for them."""
    check_out(out, catalogue, posters)
    return Output.open(out, catalogue_fingerprint=catalogue_fingerprint(catalogue, columns,
                                                                        posters),
                       model_fingerprint=model_fingerprint(Path(run_dir)), genres=genres,
                       retry_failed=retry_failed, catalogue=catalogue, model=run_dir)


class Output:
    """The output folder of a batch run, locked for the run's lifetime.

    `done`: rows in the table; `failed`: those whose status is not "ok"; `skip`: the rows the
    engine must not score again (`done`, less `failed` with `retry_failed`).
    """

    def __init__(self, path: Path, manifest: Manifest, lock: Any, retry_failed: bool) -> None:
        self.path = path
        self.manifest = manifest
        self.schema = output_schema(manifest.genres)
        self._lock = lock
        self.retry_failed = retry_failed
        self.done: set[int] = set()
        self.failed: set[int] = set()
        self._part_of: dict[int, str] = {}  # failed row -> its part (rewritten on retry)
        self._next = 0
        for part in self.parts():
            self._next = max(self._next, int(part.stem.removeprefix(PART_PREFIX)) + 1)
            t = _read_part(part, ["row", "status"])
            for row, status in zip(t.column("row").to_pylist(), t.column("status").to_pylist(),
                                   strict=True):
                self.done.add(row)
                if status != OK:
                    self.failed.add(row)
                    self._part_of[row] = part.name
        self.skip = self.done - self.failed if retry_failed else set(self.done)

    @classmethod
    def open(cls, out: str | os.PathLike, *, catalogue_fingerprint: str,
             model_fingerprint: str, genres: Sequence[str], retry_failed: bool = False,
             catalogue: str | os.PathLike = "", model: str | os.PathLike = "") -> Output:
        """Lock OUT (created if needed) and read what it holds. Refused in one line: OUT is
        not a batch output folder, another run holds its lock, or its table was made from
        another catalogue or model (a table never mixes two)."""
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise PosterGenreError(f"{path}: --out is a file, not a folder")
        if path.is_dir() and not (path / MANIFEST).is_file():
            foreign = [p.name for p in path.iterdir()
                       if p.name != LOCK and not p.name.endswith(".tmp")]
            if foreign:
                raise PosterGenreError(f"{path}: not a batch output folder (it holds "
                                       f"{foreign[0]!r} and no {MANIFEST}); choose another --out")
        lock = _lock_folder(path)
        try:
            for stale in path.glob(".*.tmp"):  # writes of a killed run
                stale.unlink(missing_ok=True)
            wanted = Manifest(str(catalogue), catalogue_fingerprint, str(model),
                              model_fingerprint, tuple(genres))
            has_parts = any(path.glob(f"{PART_PREFIX}*.parquet"))
            if (path / MANIFEST).is_file() and has_parts:
                _check_same(path, Manifest.read(path / MANIFEST), wanted)
            else:  # a new table (or a start that wrote nothing): record what it is made from
                atomic_write_json(path / MANIFEST, wanted.to_json())
            return cls(path, wanted, lock, retry_failed)
        except BaseException:
            lock.close()
            raise

    @classmethod
    def attach(cls, out: str | os.PathLike) -> Output:
        """Lock an existing output folder as it is (to read or export its table)."""
        path = Path(out)
        if not (path / MANIFEST).is_file():
            raise PosterGenreError(f"{path}: not a batch output folder (no {MANIFEST})")
        lock = _lock_folder(path)
        try:
            return cls(path, Manifest.read(path / MANIFEST), lock, retry_failed=False)
        except BaseException:
            lock.close()
            raise

    def parts(self) -> list[Path]:
        return sorted(self.path.glob(f"{PART_PREFIX}*.parquet"))

    def write_part(self, table: pa.Table) -> None:
        """Add rows to the table, atomically: a new part; with `retry_failed`, rows that
        replace failed ones are written into their parts (each rewritten atomically)."""
        if table.num_rows == 0:
            return
        table = table.cast(self.schema)
        rows = table.column("row").to_pylist()
        again = [r for r in rows if r in self.done]
        if again and (not self.retry_failed or any(r not in self._part_of for r in again)):
            raise PosterGenreError(f"{self.path}: row {again[0]} is already in the table")
        by_part: dict[str, list[int]] = {}
        new: list[int] = []
        for i, r in enumerate(rows):
            (by_part.setdefault(self._part_of[r], []) if r in self._part_of else new).append(i)
        for name, positions in by_part.items():
            replace = table.take(positions)
            old = _read_part(self.path / name)
            keep = pc.invert(pc.is_in(old.column("row"), value_set=replace.column("row")))
            merged = pa.concat_tables([old.filter(keep), replace]).sort_by("row")
            self._write(self.path / name, merged)
        if new:
            self._write(self.path / f"{PART_PREFIX}{self._next:06d}.parquet",
                        table.take(new) if len(new) < len(rows) else table)
            self._next += 1
        for r, status in zip(rows, table.column("status").to_pylist(), strict=True):
            self.done.add(r)
            self.skip.add(r)
            if status == OK:
                self.failed.discard(r)
                self._part_of.pop(r, None)
            else:
                self.failed.add(r)

    def _write(self, path: Path, table: pa.Table) -> None:
        with atomic_open(path, "wb") as f:
            pq.write_table(table.cast(self.schema), f)

    def read(self) -> pd.DataFrame:
        """The whole table, sorted by `row`."""
        import pandas as pd

        parts = [_read_part(p) for p in self.parts()]
        table = pa.concat_tables(parts) if parts else self.schema.empty_table()
        return table.sort_by("row").to_pandas() if len(table) else pd.DataFrame(
            columns=self.schema.names)

    def export(self, fmt: str) -> Path:
        """Write the whole table as one CSV or JSON-lines file (`EXPORTS`), part by part in
        catalogue order (parts sorted by their first row), atomically; return its path."""
        import pyarrow.csv as pcsv

        if fmt not in EXPORTS:
            raise PosterGenreError(f"--format must be parquet, {', '.join(EXPORTS)}; not {fmt!r}")
        self.finish()
        parts = sorted(((_read_part(p).sort_by("row")) for p in self.parts()),
                       key=lambda t: t.column("row")[0].as_py() if len(t) else -1)
        target = self.path / EXPORTS[fmt]
        with atomic_open(target, "wb") as f:
            if fmt == "csv":
                with pcsv.CSVWriter(f, self.schema) as writer:
                    for t in parts:
                        writer.write_table(t)
            else:
                for t in parts:
                    for record in t.to_pylist():
                        f.write((json.dumps({k: _json_value(v) for k, v in record.items()},
                                            ensure_ascii=False) + "\n").encode("utf-8"))
        return target

    def finish(self) -> None:
        """Make sure `pandas.read_parquet(OUT)` works even for an empty catalogue."""
        if not self.parts():
            self._write(self.path / f"{PART_PREFIX}{self._next:06d}.parquet",
                        self.schema.empty_table())
            self._next += 1

    def close(self) -> None:
        """Release the lock (the OS releases it too when the process dies)."""
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def __enter__(self) -> Output:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lock_folder(path: Path) -> Any:
    """Create `path` if needed and hold an exclusive flock on its lock file (the pid inside
    names the holder); refused in one line while another process holds it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        lock = open(path / LOCK, "a+", encoding="utf-8")  # noqa: SIM115 (held open)
    except OSError as e:
        raise PosterGenreError(f"{path}: cannot write the output folder ({e.strerror})"
                               ) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        pid = lock.read().strip() or "?"
        lock.close()
        raise PosterGenreError(f"{path}: another batch run (pid {pid}) is writing here; "
                               "wait for it to finish or choose another --out") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def export_table(out: str | os.PathLike, fmt: str) -> Path:
    """Write OUT's table as one CSV or JSON-lines file inside OUT (`EXPORTS`)."""
    with Output.attach(out) as output:
        return output.export(fmt)


def _json_value(v: Any) -> Any:
    return None if isinstance(v, float) and v != v else v


def _read_part(path: Path, columns: list[str] | None = None) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as e:
        raise PosterGenreError(f"{path}: unreadable part of the table ({e}); delete it and "
                               "rerun to score its rows again") from None


def _check_same(path: Path, have: Manifest, want: Manifest) -> None:
    if have.version != want.version:
        raise PosterGenreError(f"{path}: written by another version of the batch format "
                               f"({have.version}); choose another --out")
    if have.catalogue_fingerprint != want.catalogue_fingerprint:
        raise PosterGenreError(f"{path}: holds the results of another catalogue "
                               f"({have.catalogue}); rerun with that one or choose another --out")
    if have.model_fingerprint != want.model_fingerprint or have.genres != want.genres:
        raise PosterGenreError(f"{path}: holds the results of another model ({have.model}); "
                               "rerun with that one or choose another --out")


def rows_todo(chunks: Iterable[list[Row]], skip: set[int]) -> Iterator[Row]:
    """The rows not yet in the table, in catalogue order."""
    for chunk in chunks:
        for row in chunk:
            if row.index not in skip:
                yield row

