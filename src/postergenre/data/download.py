"""Poster download: every `Poster` URL of a Kaggle `MovieGenre.csv` to `<out>/posters/<imdbId>.jpg`.

Concurrent (a fixed pool of asyncio workers sharing one client), bounded by `concurrency`. The
fetching is `data.fetch`'s: a deadline per attempt (so a server that drips bytes cannot hold a
worker forever), retries with exponential backoff and jitter on 5xx, 429, timeouts and broken
connections; other 4xx, redirect loops and invalid bodies fail at once.

Every body is validated before it is kept: HTTP status, an `image/*` content type (or none),
a size limit (by the fetcher), then a full decode with `open_poster` (HTML error pages,
truncated JPEGs and tracking pixels are rejected). A poster is written with a temp file and a
rename, so a run killed at any moment leaves only complete posters; a rerun skips posters
already present and valid and removes temp files left by a killed run. Each run writes
`download-report.json` listing every failure with its reason.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from postergenre.data.fetch import FetchConfig, FetchError, fetch_async, is_url, make_client
from postergenre.data.images import open_poster
from postergenre.data.movies import read_labels
from postergenre.defaults import (
    DOWNLOAD_CONCURRENCY,
    DOWNLOAD_RETRIES,
    DOWNLOAD_TIMEOUT,
    MAX_POSTER_BYTES,
)
from postergenre.errors import DatasetError, InvalidImageError
from postergenre.io import atomic_write_bytes, atomic_write_json, ensure_writable_dir

if TYPE_CHECKING:
    import httpx

KAGGLE_COLUMNS = ("imdbId", "Imdb Link", "Title", "IMDB Score", "Genre", "Poster")
REPORT_NAME = "download-report.json"
USER_AGENT = "postergenre-download/1"


@dataclass(frozen=True)
class PosterLink:
    """One poster to fetch: the movie's IMDB id, its title as found, the image URL."""

    imdb_id: int
    title: str
    url: str


@dataclass(frozen=True)
class Failure:
    """A poster that could not be downloaded (or a CSV row that names none), and why."""

    imdb_id: int | None
    title: str
    url: str
    reason: str
    row: int | None = None  # 1-based data row of the CSV, for rows that name no poster


@dataclass
class DownloadConfig:
    """`data download`'s settings; `fetch_config()` turns them into the fetcher's."""

    concurrency: int = DOWNLOAD_CONCURRENCY  # the defaults: defaults.py
    timeout: float = DOWNLOAD_TIMEOUT
    retries: int = DOWNLOAD_RETRIES
    backoff: float = 0.5  # first retry delay in seconds, doubled each time (+-50% jitter)
    max_bytes: int = MAX_POSTER_BYTES
    max_redirects: int = 5

    def fetch_config(self) -> FetchConfig:
        """`timeout` bounds both each read and the whole attempt."""
        return FetchConfig(concurrency=self.concurrency, timeout=self.timeout,
                           deadline=self.timeout, retries=self.retries, backoff=self.backoff,
                           max_bytes=self.max_bytes, max_redirects=self.max_redirects,
                           user_agent=USER_AGENT)


@dataclass
class DownloadSummary:
    total: int = 0
    downloaded: int = 0
    skipped: int = 0  # already present and valid
    failures: list[Failure] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)


def read_poster_links(path: str | os.PathLike) -> tuple[list[PosterLink], list[Failure]]:
    """Read a Kaggle-format CSV: the poster links (first row per id) and the unusable rows.

    Decoding and parsing are `postergenre.data.movies.read_labels`'s (robust to non-UTF-8
    bytes; titles kept as found). Raises DatasetError (one line) for a missing, empty or
    binary file, or one that is not in the Kaggle format (no `Poster` column).
    """
    labels = read_labels(path)
    if labels.layout != "kaggle":
        raise DatasetError(f"{path}: no Poster column; expected the Kaggle format "
                           f"{','.join(KAGGLE_COLUMNS)}")
    links: list[PosterLink] = []
    problems: list[Failure] = []
    seen: set[int] = set()
    table = labels.table[["row", "imdbId", "title", "poster_url"]]
    for row, imdb_id, title, url in table.itertuples(index=False):
        imdb_id = None if pd.isna(imdb_id) else int(imdb_id)
        reason = None
        if imdb_id is None:
            reason = "invalid imdbId"
        elif not url:
            reason = "no poster URL"
        elif not is_url(url):
            reason = f"not an http(s) URL: {url[:80]!r}"
        if reason:
            problems.append(Failure(imdb_id, title, url, reason, row))
        elif imdb_id is not None and imdb_id not in seen:
            seen.add(imdb_id)
            links.append(PosterLink(imdb_id, title, url))
    if not links and not problems:
        raise DatasetError(f"{path}: no data rows under the header")
    return links, problems


# ---------------------------------------------------------------- downloading


def poster_path(out: Path, imdb_id: int) -> Path:
    return out / "posters" / f"{imdb_id}.jpg"


def _is_valid(path: Path) -> bool:
    try:
        open_poster(path)
    except InvalidImageError:
        return False
    return True


def _validate_and_save(body: bytes, path: Path) -> None:
    """Keep `body` at `path` if it decodes as a poster; InvalidImageError if not."""
    open_poster(body)
    atomic_write_bytes(path, body)


def remove_partial_files(out: Path) -> int:
    """Delete temp files a killed run left in `<out>/posters`; return how many."""
    stale = list((out / "posters").glob(".*.tmp"))
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


async def download_links(
    links: list[PosterLink],
    out: str | os.PathLike,
    config: DownloadConfig | None = None,
    on_done: Callable[[str], None] | None = None,
) -> DownloadSummary:
    """Fetch every link into `<out>/posters/`; `on_done(outcome)` is called once per link
    with "downloaded", "skipped" or "failed"."""
    cfg = config or DownloadConfig()
    if cfg.concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    fetch_cfg = cfg.fetch_config()
    out = Path(out)
    ensure_writable_dir(out / "posters")
    remove_partial_files(out)
    summary = DownloadSummary(total=len(links))
    pending = iter(links)  # shared by the workers; each takes the next link when free

    async def worker(client: httpx.AsyncClient) -> None:
        for link in pending:
            outcome = await process(client, link)
            if on_done:
                on_done(outcome)

    async def process(client: httpx.AsyncClient, link: PosterLink) -> str:
        path = poster_path(out, link.imdb_id)
        if path.exists() and await asyncio.to_thread(_is_valid, path):
            summary.skipped += 1
            return "skipped"
        try:
            body = await fetch_async(client, link.url, fetch_cfg)
            await asyncio.to_thread(_validate_and_save, body, path)
        except FetchError as e:
            reason = e.reason
        except InvalidImageError as e:
            reason = str(e).removeprefix("uploaded bytes: ")
        else:
            summary.downloaded += 1
            return "downloaded"
        summary.failures.append(Failure(link.imdb_id, link.title, link.url, reason))
        return "failed"

    async with make_client(fetch_cfg) as client:
        workers = max(1, min(cfg.concurrency, len(links)))
        await asyncio.gather(*(worker(client) for _ in range(workers)))
    order: dict[int | None, int] = {link.imdb_id: i for i, link in enumerate(links)}
    summary.failures.sort(key=lambda f: order[f.imdb_id])
    return summary


def download_posters(
    csv_path: str | os.PathLike,
    out: str | os.PathLike,
    config: DownloadConfig | None = None,
    on_start: Callable[[int], None] | None = None,
    on_done: Callable[[str], None] | None = None,
) -> DownloadSummary:
    """Read `csv_path`, download its posters into `<out>/posters/` and write
    `<out>/download-report.json`. `on_start(total)` is called once the CSV is read."""
    links, problems = read_poster_links(csv_path)
    out = ensure_writable_dir(out)
    if on_start:
        on_start(len(links))
    summary = asyncio.run(download_links(links, out, config, on_done))
    summary.failures = problems + summary.failures
    write_report(out / REPORT_NAME, csv_path, summary)
    return summary


def write_report(path: Path, csv_path: str | os.PathLike, summary: DownloadSummary) -> None:
    """The run's counts and every failure with its reason (atomically)."""
    atomic_write_json(path, {
        "csv": str(csv_path),
        "posters": summary.total,
        "downloaded": summary.downloaded,
        "skipped": summary.skipped,
        "failed": summary.failed,
        "failures": [
            {("imdbId" if k == "imdb_id" else k): v for k, v in asdict(f).items()
             if not (k == "row" and v is None)}
            for f in summary.failures
        ],
    })
