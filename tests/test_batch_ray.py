"""`postergenre batch --engine ray`: the Ray Data engine gives the local engine's table (same
rows, statuses, scores to 1e-5) on one node and on a two-node local cluster, with every kind
of bad row, and a driver killed with SIGKILL resumes without losing or repeating a row.

One local Ray (2 CPUs) serves the whole file; drivers in subprocesses connect to it by address
rather than starting Ray of their own.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_poster, make_tiny_run

ray = pytest.importorskip("ray", reason="Ray is not installed (the 'ray' extra)")
pytest.importorskip("ray.data", reason="Ray Data is not installed (the 'ray' extra)")

from postergenre.batch.local import run_local  # noqa: E402
from postergenre.batch.ray_engine import run_ray  # noqa: E402
from postergenre.data.fetch import FetchConfig  # noqa: E402
from postergenre.errors import PosterGenreError  # noqa: E402

pytestmark = pytest.mark.slow  # every test here starts, joins or waits on Ray: seconds each

GENRES = ["Action", "Comedy", "Drama", "Horror"]
SRC = Path(__file__).resolve().parents[1] / "src"
STALL_S = 3.0  # the stalling URL answers after this long; the fetch gives up sooner
FETCH = FetchConfig(timeout=0.5, deadline=1.0, retries=0)


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_address(_private_cache: None) -> Iterator[str]:
    """A local Ray with 2 CPUs for this file (workers inherit this process's environment:
    PYTHONPATH and the private cache)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


class _Posters(BaseHTTPRequestHandler):
    jpeg = b""

    def do_GET(self) -> None:  # noqa: N802 (the http.server name)
        path = self.path
        if path.startswith("/ok/"):
            self._send(200, "image/jpeg", self.jpeg)
        elif path == "/html":
            self._send(200, "text/html", b"<html><body>Not a poster</body></html>")
        elif path == "/truncated":
            self._send(200, "image/jpeg", self.jpeg[: len(self.jpeg) // 3])
        elif path == "/stall":
            time.sleep(STALL_S)
            self._send(200, "image/jpeg", self.jpeg)
        else:
            self._send(404, "text/plain", b"no such poster")

    def _send(self, status: int, kind: str, body: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client gave up (the stalling URL)
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """http://127.0.0.1:PORT serving a poster under /ok/, and /html, /truncated, /stall, 404s."""
    _Posters.jpeg = make_poster(tmp_path_factory.mktemp("served") / "p.jpg", seed=99).read_bytes()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Posters)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("run") / "run", GENRES)


def write_catalogue(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """A catalogue in MovieGenre.csv's own columns (imdbId, Imdb Link, Title, IMDB Score,
    Genre, Poster)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["imdbId", "Imdb Link", "Title", "IMDB Score", "Genre", "Poster"])
        for imdb_id, title, poster in rows:
            w.writerow([imdb_id, f"http://www.imdb.com/title/tt{imdb_id}", title, "6.1",
                        "Drama", poster])
    return path


def good_rows(folder: Path, n: int, first_id: int = 1000) -> list[tuple[str, str, str]]:
    return [(str(first_id + i), f"Movie {i} ({1990 + i % 30})",
             str(make_poster(folder / f"{first_id + i}.jpg", seed=i)))
            for i in range(n)]


@pytest.fixture(scope="module")
def bad_catalogue(tmp_path_factory: pytest.TempPathFactory, server: str) -> Path:
    """Good posters from files and a URL, and one row of every kind of failure."""
    root = tmp_path_factory.mktemp("bad")
    rows = good_rows(root / "posters", 12)
    rows += [
        ("2001", "Served (2001)", f"{server}/ok/2001.jpg"),
        ("2002", "Gone (2002)", f"{server}/missing.jpg"),
        ("2003", "Stalled (2003)", f"{server}/stall"),
        ("2004", "A Web Page (2004)", f"{server}/html"),
        ("2005", "Cut Short (2005)", f"{server}/truncated"),
        ("2006", "No File (2006)", str(root / "posters" / "nowhere.jpg")),
        ("", "No Id (2007)", rows[0][2]),
        ("1003", "Twice (2008)", rows[1][2]),  # 1003 already seen: a duplicate id
        ("2009", "", rows[2][2]),  # no title: the poster alone
    ]
    return write_catalogue(root / "catalogue.csv", rows)


def read_table(out: Path) -> pd.DataFrame:
    table = pd.read_parquet(out)
    return table.sort_values("row").reset_index(drop=True)


def assert_same_table(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns)
    assert a["row"].tolist() == b["row"].tolist()
    for column in ("id", "title", "source", "status", "fused", "top_genres"):
        assert a[column].fillna("-").tolist() == b[column].fillna("-").tolist(), column
    np.testing.assert_allclose(a[GENRES].to_numpy(float), b[GENRES].to_numpy(float), atol=1e-5)


def cli(*args: str, address: str) -> list[str]:
    return [sys.executable, "-m", "postergenre", "batch", *args, "--engine", "ray",
            "--ray-address", address]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])}


# --- tests ------------------------------------------------------------------------------------


def test_ray_engine_equals_local_engine_on_every_kind_of_bad_row(
        ray_address: str, bad_catalogue: Path, tiny_run: Path, tmp_path: Path) -> None:
    local = run_local(bad_catalogue, tmp_path / "local", model=tiny_run, fetch=FETCH)
    on_ray = run_ray(bad_catalogue, tmp_path / "ray", model=tiny_run, fetch=FETCH, actors=1)
    a, b = read_table(tmp_path / "local"), read_table(tmp_path / "ray")
    assert_same_table(a, b)
    assert len(b) == 21 and b["row"].tolist() == list(range(21))
    status = dict(zip(b["title"], b["status"], strict=True))
    assert sum(s == "ok" for s in b["status"]) == 14  # 12 files, the served poster, no title
    for title in ("Gone (2002)", "Stalled (2003)", "A Web Page (2004)", "Cut Short (2005)",
                  "No File (2006)", "No Id (2007)", "Twice (2008)"):
        assert status[title] != "ok" and "\n" not in status[title], title
    assert (on_ray.rows, on_ray.scored, on_ray.failed) == (local.rows, local.scored, 7)


def test_ray_engine_resumes_and_retries_failed_rows(
        ray_address: str, bad_catalogue: Path, tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_ray(bad_catalogue, out, model=tiny_run, fetch=FETCH)
    parts = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    again = run_ray(bad_catalogue, out, model=tiny_run, fetch=FETCH)
    assert (again.skipped, again.scored) == (21, 0)  # nothing left to do
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")} == parts
    retried = run_ray(bad_catalogue, out, model=tiny_run, fetch=FETCH, retry_failed=True)
    assert (retried.skipped, retried.scored, retried.failed) == (14, 7, 7)  # failed rows only
    table = read_table(out)
    assert table["row"].tolist() == list(range(21))


def test_an_unreachable_address_a_broken_run_and_too_many_actors_are_refused_in_one_line(
        ray_address: str, bad_catalogue: Path, tiny_run: Path, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run(cli(str(bad_catalogue), "--out", str(tmp_path / "a"),
                              address=f"127.0.0.1:{port}"),
                          env=env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: --ray-address 127.0.0.1:{port}: nothing answers there (Connection refused); "
        "start the cluster's head with `ray start --head` and pass the address it prints"]
    assert not (tmp_path / "a").exists()  # refused before OUT was touched
    broken = tmp_path / "broken-run"
    shutil.copytree(tiny_run, broken)
    (broken / "weights.safetensors").write_bytes(b"not weights")
    with pytest.raises(PosterGenreError, match=r"weights.safetensors: not a readable"):
        run_ray(bad_catalogue, tmp_path / "c", model=broken, fetch=FETCH)  # before any actor
    with pytest.raises(PosterGenreError, match=r"--actors 2: the Ray cluster has 2 CPUs"):
        run_ray(bad_catalogue, tmp_path / "b", model=tiny_run, fetch=FETCH, actors=2)
    assert run_ray(bad_catalogue, tmp_path / "b", model=tiny_run, fetch=FETCH).scored == 21


def test_ray_driver_killed_with_sigkill_then_rerun_loses_and_repeats_nothing(
        ray_address: str, tiny_run: Path, tmp_path: Path) -> None:
    catalogue = write_catalogue(tmp_path / "catalogue.csv", good_rows(tmp_path / "posters", 160))
    out = tmp_path / "out"
    args = cli(str(catalogue), "--out", str(out), "--model", str(tiny_run), "--batch-size", "8",
               "--part-rows", "16", address=ray_address)
    driver = subprocess.Popen(args, env=env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("part-*.parquet")) and driver.poll() is None:
            assert time.monotonic() < deadline, "no part written in 120 s"
            time.sleep(0.05)
        assert driver.poll() is None, driver.stderr.read().decode() if driver.stderr else ""
        os.killpg(driver.pid, signal.SIGKILL)
    finally:
        driver.wait()
    before = {p.name: p.read_bytes() for p in out.glob("part-*.parquet")}
    assert 0 < sum(len(pd.read_parquet(io.BytesIO(b))) for b in before.values()) < 160
    rerun = subprocess.run(args, env=env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    noise = [line for line in rerun.stderr.splitlines()
             if any(m in line for m in (".cc:", " INFO ", "WARNING", "Traceback"))]
    assert not noise  # Ray's own log lines stay off the user's terminal
    after = {p.name: p.read_bytes() for p in out.glob("part-*.parquet")}
    assert all(after[name] == data for name, data in before.items())  # kept, not redone
    table = read_table(out)
    assert table["row"].tolist() == list(range(160))
    assert (table["status"] == "ok").all()


def test_ray_engine_on_a_two_node_cluster_equals_local_engine(
        ray_address: str, tiny_run: Path, tmp_path: Path) -> None:
    from ray.cluster_utils import Cluster

    catalogue = tmp_path / "posters"  # a folder of posters: no titles, ids from file names
    good_rows(catalogue, 60)
    run_local(catalogue, tmp_path / "local", model=tiny_run)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        done = subprocess.run(
            [*cli(str(catalogue), "--out", str(tmp_path / "ray"), "--model", str(tiny_run),
                  "--batch-size", "8", address=cluster.address)],
            env=env(), capture_output=True, text=True, timeout=300)
    finally:
        cluster.shutdown()
    assert done.returncode == 0, done.stderr
    assert_same_table(read_table(tmp_path / "local"), read_table(tmp_path / "ray"))
