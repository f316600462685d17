"""`postergenre batch` on this machine: every kind of bad row, MovieGenre.csv as it is, resume
after SIGKILL, refusals, --retry-failed, and the output table pandas reads."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from conftest import make_poster, make_tiny_run

from postergenre.batch.catalogue import (
    FIXED_COLUMNS,
    Columns,
    Output,
    catalogue_fingerprint,
    model_fingerprint,
    read_rows,
)
from postergenre.batch.local import run_local
from postergenre.cli import main as cli_main
from postergenre.data.fetch import FetchConfig
from postergenre.errors import PosterGenreError
from postergenre.predict import Predictor

GENRES = ["Comedy", "Drama", "Horror"]
SRC = Path(__file__).resolve().parents[1] / "src"
SAMPLE = SRC / "postergenre" / "assets" / "sample" / "posters"
FAST = FetchConfig(concurrency=4, timeout=2.0, deadline=2.0, retries=0)  # a busy CI core is slow


# --- a poster server on 127.0.0.1 with every failure --------------------------------------


class PosterServer:
    """/p/<name>: a poster (after `delay` s); /404/..., /stall/... (6 s), /html/...,
    /trunc/... (half a JPEG), /flaky/<name>: 404 until `flaky_ok`. `hits` counts paths."""

    def __init__(self, posters: dict[str, bytes]) -> None:
        self.posters, self.delay, self.flaky_ok = posters, 0.0, False
        self.hits: Counter[str] = Counter()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (the base class's name)
                server.hits[self.path] += 1
                kind, _, name = self.path.strip("/").partition("/")
                poster = server.posters.get(name, next(iter(server.posters.values())))
                if kind == "stall":
                    time.sleep(6)
                if kind == "p" or (kind == "flaky" and server.flaky_ok):
                    time.sleep(server.delay)
                    self.reply(200, "image/jpeg", poster)
                elif kind == "html":
                    self.reply(200, "text/html", b"<html><body>Not here</body></html>")
                elif kind == "trunc":
                    self.reply(200, "image/jpeg", poster[: len(poster) // 2])
                else:
                    self.reply(404, "text/plain", b"not found")

            def reply(self, status: int, ctype: str, body: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client gave up (a stall past its deadline)
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def sample_posters() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(SAMPLE.glob("*.jpg"))}


@pytest.fixture
def server(sample_posters: dict[str, bytes]) -> Iterator[PosterServer]:
    srv = PosterServer(sample_posters)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny poster run with a title model, and another model (other weights)."""
    from postergenre.models.text import Fusion, TitleModel
    from postergenre.train.text import save_text

    root = tmp_path_factory.mktemp("runs")
    run = make_tiny_run(root / "run", GENRES)
    titles = ["Crazy Wedding (1999)", "Mother River (1960)", "Zombie Blood (1985)"] * 20
    y = np.tile(np.eye(3, dtype=np.float32), (20, 1))
    model = TitleModel(GENRES, n_features=2**10).fit(titles, y)
    fusion = Fusion(GENRES, "global", np.ones(3), np.ones(3), np.zeros(3), np.full(3, -0.7))
    save_text(run, model, fusion, np.full(3, 0.4), {"fusion_fitted_on": "val"})
    return run, make_tiny_run(root / "other", GENRES, seed=1)


def write_csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    lines = ["imdbId,Title,Poster"] + [",".join(f'"{c}"' for c in r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def good_rows(server: PosterServer, n: int, path: str = "p") -> list[tuple[str, str, str]]:
    names = list(server.posters)
    return [(str(1000 + i), f"Movie {i} (2001)" if i % 2 else "",
             f"{server.url}/{path}/{names[i % len(names)]}") for i in range(n)]


def table(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out).sort_values("row").reset_index(drop=True)


# --- the rows ------------------------------------------------------------------------------


def test_every_kind_of_bad_row_is_a_row_with_its_status(runs, server, tmp_path) -> None:
    run, _ = runs
    poster = SAMPLE / "3500822.jpg"
    u = server.url
    catalogue = write_csv(tmp_path / "cat.csv", [
        ("1", "Zombie Blood (1985)", str(poster)),
        ("2", "", f"{u}/p/3503406.jpg"),
        ("3", "", f"{u}/404/x.jpg"),
        ("4", "", f"{u}/stall/x.jpg"),
        ("5", "", f"{u}/html/x.jpg"),
        ("6", "", f"{u}/trunc/3503406.jpg"),
        ("7", "", str(tmp_path / "missing.jpg")),
        ("", "No Id (2000)", str(poster)),
        ("1", "Again (2000)", str(poster)),
        ("9", "", ""),
        ("10", "Mother River (1960)", "3500822.jpg"),  # relative to the catalogue's folder
    ])
    (tmp_path / "3500822.jpg").write_bytes(poster.read_bytes())
    out = tmp_path / "out"
    summary = run_local(catalogue, out, model=run, backend="torch", fetch=FAST, top_k=2)
    df = table(out)
    assert list(df.columns) == [*FIXED_COLUMNS, *GENRES]
    assert df["row"].tolist() == list(range(11)) and summary.rows == 11
    status = dict(zip(df["row"], df["status"], strict=True))
    assert status[0] == status[1] == status[10] == "ok"
    assert status[2] == f"{u}/404/x.jpg: HTTP 404 Not Found"
    assert status[3].startswith(f"{u}/stall/x.jpg: timed out")
    assert status[4] == f"{u}/html/x.jpg: content type text/html, not an image"
    assert status[5] == f"{u}/trunc/3503406.jpg: truncated or corrupt image"
    assert status[6] == f"{tmp_path / 'missing.jpg'}: no such file"
    assert status[7] == "no id" and status[8] == "duplicate id, first seen at row 0"
    assert status[9] == "no poster (empty poster column)"
    assert summary.failed == 8 and summary.scored == 11 and summary.skipped == 0
    assert all("\n" not in s for s in status.values())
    bad = df[df["status"] != "ok"]
    assert bad[GENRES].isna().all().all() and bad["top_genres"].isna().all()
    assert not bad["fused"].any()
    # the good rows: the scores `predict` gives, fused with the title where there is one
    predictor = Predictor.load(run, backend="torch")
    want = predictor.predict_files([poster, server.posters["3503406.jpg"], poster],
                                   titles=["Zombie Blood (1985)", None, "Mother River (1960)"])
    np.testing.assert_allclose(df.loc[[0, 1, 10], GENRES].to_numpy(), want, atol=1e-6)
    assert df["fused"].tolist()[:2] == [True, False] and df.loc[10, "fused"]
    assert df.loc[0, "top_genres"] == "|".join(np.array(GENRES)[np.argsort(-want[0])][:2])
    assert df.loc[10, "source"] == str(tmp_path / "3500822.jpg")
    assert df.loc[0, "title"] == "Zombie Blood (1985)" and pd.isna(df.loc[1, "title"])
    assert all(df[g].dtype == np.float32 for g in GENRES)


@pytest.mark.realdata
def test_moviegenre_csv_as_it_is(runs, server, real_data, tmp_path) -> None:
    """30 real rows of MovieGenre.csv in its 6-column format (mojibake titles, missing
    scores), one of them in Windows-1252 bytes and one repeated, URLs pointed at the server."""
    run, _ = runs
    lines = (real_data / "MovieGenre-excerpt.csv").read_bytes().split(b"\n")
    header, body = lines[0], [line for line in lines[1:] if line]
    odd = [line for line in body[20:] if not line.isascii() or b",," in line][:10]
    rows = body[:20] + odd
    names = list(server.posters)

    def local_url(line: bytes, i: int) -> bytes:
        head = line[: line.rindex(b',"https://')]
        return head + f',"{server.url}/p/{names[i % len(names)]}"'.encode()

    rows = [local_url(line, i) for i, line in enumerate(rows)]
    title = rows[20].decode("utf-8").split(",")[2]
    rows[20] = rows[20].decode("utf-8").encode("cp1252")  # as parts of the full file are
    with pytest.raises(UnicodeDecodeError):
        rows[20].decode("utf-8")
    rows.append(rows[3])  # the full file repeats 571 ids
    catalogue = tmp_path / "MovieGenre.csv"
    catalogue.write_bytes(b"\n".join([header, *rows]) + b"\n")
    chunks = list(read_rows(catalogue, chunk_rows=8))
    assert [len(c) for c in chunks] == [8, 8, 8, 7]
    out = tmp_path / "out"
    summary = run_local(catalogue, out, model=run, backend="torch", fetch=FAST)
    df = table(out)
    assert len(df) == 31 and summary.failed == 1
    assert df.loc[30, "status"] == "duplicate id, first seen at row 3"
    assert (df["status"][:30] == "ok").all() and df["fused"][:30].all()
    from postergenre.data.movies import read_labels

    labels = read_labels(catalogue).table
    assert df["title"].tolist() == labels["title"].tolist() and df.loc[20, "title"] == title
    assert df["id"].tolist() == [str(i) for i in labels["imdbId"]]


# --- resume, refusals, retries ---------------------------------------------------------------


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH",
                                                                                 "")])}
    return subprocess.Popen([sys.executable, "-m", "postergenre", "batch", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_resume_after_sigkill_loses_nothing_and_redoes_nothing(runs, server, tmp_path) -> None:
    run, _ = runs
    server.delay = 0.1
    catalogue = write_csv(tmp_path / "cat.csv", good_rows(server, 60))
    out = tmp_path / "out"
    args = [str(catalogue), "--out", str(out), "--model", str(run), "--backend", "torch",
            "--part-rows", "4", "--batch-size", "4", "--concurrency", "2"]
    proc = _cli(*args)
    deadline = time.monotonic() + 60
    while len(list(out.glob("part-*.parquet"))) < 3 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("part-*")}
    written = set(pd.read_parquet(out)["id"])
    assert 12 <= len(written) < 60, "killed mid-run"
    hits = Counter(server.hits)
    server.delay = 0.0
    proc = _cli(*args)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert f"{len(written)} already there" in stderr
    df = table(out)
    assert df["row"].tolist() == list(range(60)) and (df["status"] == "ok").all()
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes())
            for p in out.glob("part-*") if p.name in before} == before  # untouched
    again = {url for url in server.hits if server.hits[url] > hits[url]}
    rows = dict(zip(df["source"].str.removeprefix(server.url), df["id"], strict=True))
    assert again and not {rows[u] for u in again} & written  # rows written: not fetched again


def test_refuses_another_model_catalogue_or_a_concurrent_run(runs, tmp_path, capsys,
                                                            monkeypatch) -> None:
    run, other = runs
    catalogue = write_csv(tmp_path / "cat.csv", [("1", "", str(SAMPLE / "3500822.jpg"))])
    out = tmp_path / "out"
    run_local(catalogue, out, model=run, backend="torch")
    with pytest.raises(PosterGenreError, match="another model"):
        run_local(catalogue, out, model=other, backend="torch")
    edited = write_csv(tmp_path / "cat.csv", [("2", "", str(SAMPLE / "3500822.jpg"))])
    with pytest.raises(PosterGenreError, match="another catalogue"):
        run_local(edited, out, model=run, backend="torch")
    write_csv(tmp_path / "cat.csv", [("1", "", str(SAMPLE / "3500822.jpg"))])  # as it was
    held = Output.open(out, catalogue_fingerprint=catalogue_fingerprint(catalogue),
                       model_fingerprint=model_fingerprint(run), genres=GENRES)
    try:  # the command line, through the same entry point users meet
        monkeypatch.setattr(sys, "argv", ["postergenre", "batch", str(catalogue), "--out",
                                          str(out), "--model", str(run)])
        with pytest.raises(SystemExit) as exit_:
            cli_main()
        assert exit_.value.code == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: {out}: another batch run (pid {os.getpid()}) is writing "
                       "here; wait for it to finish or choose another --out"]
    finally:
        held.close()
    assert run_local(catalogue, out, model=run, backend="torch").skipped == 1
    # a folder that is not a batch output, and a bad catalogue that leaves nothing behind
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    with pytest.raises(PosterGenreError, match="not a batch output folder"):
        run_local(catalogue, tmp_path / "notes", model=run, backend="torch")
    with pytest.raises(PosterGenreError, match="no column 'Nope'"):
        run_local(catalogue, tmp_path / "new", model=run, columns=Columns(id="Nope"))
    assert not (tmp_path / "new").exists()
    with pytest.raises(PosterGenreError, match="inside the catalogue"):
        run_local(SAMPLE, SAMPLE / "out", model=run)


def test_retry_failed_rescores_only_the_failed_rows(runs, server, tmp_path) -> None:
    run, _ = runs
    rows = good_rows(server, 10)
    rows[3] = (rows[3][0], rows[3][1], rows[3][2].replace("/p/", "/flaky/"))
    rows[8] = (rows[8][0], rows[8][1], rows[8][2].replace("/p/", "/flaky/"))
    catalogue = write_csv(tmp_path / "cat.csv", rows)
    out = tmp_path / "out"
    first = run_local(catalogue, out, model=run, backend="torch", fetch=FAST, part_rows=4,
                      batch_size=4)
    assert first.failed == 2 and len(list(out.glob("part-*"))) == 3
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")}
    server.flaky_ok = True
    server.hits.clear()
    again = run_local(catalogue, out, model=run, backend="torch", fetch=FAST)
    assert (again.scored, again.skipped, again.failed) == (0, 10, 2) and not server.hits
    retried = run_local(catalogue, out, model=run, backend="torch", fetch=FAST,
                        retry_failed=True)
    assert (retried.scored, retried.skipped, retried.failed) == (2, 8, 0)
    assert sorted(server.hits) == sorted(rows[i][2].removeprefix(server.url) for i in (3, 8))
    df = table(out)
    assert df["row"].tolist() == list(range(10)) and (df["status"] == "ok").all()
    changed = {p.name for p in out.glob("part-*") if p.stat().st_mtime_ns != mtimes[p.name]}
    assert changed == {"part-000000.parquet", "part-000002.parquet"}  # rows 3 and 8
    assert len(mtimes) == 3


def test_folder_catalogue_from_the_command_line(runs, tmp_path, capsys, monkeypatch) -> None:
    run, _ = runs
    folder = tmp_path / "posters"
    for i in range(5):
        make_poster(folder / f"{100 + i}.jpg", seed=i)
    (folder / "bad.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    for fmt in ("jsonl", "csv"):
        monkeypatch.setattr(sys, "argv", ["postergenre", "batch", str(folder), "--out",
                                          str(out), "--model", str(run), "--backend", "torch",
                                          "--format", fmt])
        with pytest.raises(SystemExit) as exit_:
            cli_main()
        assert exit_.value.code == 1
        err = capsys.readouterr().err
        assert "1 of 6 rows failed" in err and f"_table.{fmt}" in err
    df = table(out)
    assert df["id"].tolist() == ["100", "101", "102", "103", "104", "bad"]
    assert df["status"].iloc[5] == f"{folder / 'bad.jpg'}: not an image (unrecognised format)"
    as_csv = pd.read_csv(out / "_table.csv", dtype={"id": str})
    as_json = pd.read_json(out / "_table.jsonl", lines=True, dtype={"id": str})
    for other in (as_csv, as_json):
        assert other["id"].tolist() == df["id"].tolist()
        np.testing.assert_allclose(other[GENRES].to_numpy(float), df[GENRES].to_numpy(float),
                                   rtol=1e-6)


def test_posters_folder_first_and_other_columns(runs, server, tmp_path) -> None:
    """--posters: <id>.jpg there is read, the URL is not fetched; a Parquet catalogue with
    its own column names."""
    run, _ = runs
    posters = tmp_path / "downloaded"
    make_poster(posters / "7.jpg", seed=7)
    catalogue = tmp_path / "cat.parquet"
    pd.DataFrame({"key": [7, 8], "name": ["A (2000)", None],
                  "image": [f"{server.url}/p/a.jpg", f"{server.url}/p/b.jpg"]}
                 ).to_parquet(catalogue)
    out = tmp_path / "out"
    summary = run_local(catalogue, out, model=run, backend="torch", posters=posters,
                        columns=Columns(id="key", poster="image", title="name"))
    df = table(out)
    assert summary.failed == 0 and df["id"].tolist() == ["7", "8"]
    assert df["source"].tolist() == [str(posters / "7.jpg"), f"{server.url}/p/b.jpg"]
    assert list(server.hits) == ["/p/b.jpg"]
    assert df.loc[0, "title"] == "A (2000)" and pd.isna(df.loc[1, "title"])
    assert df["fused"].tolist() == [True, False]


def test_empty_catalogue_is_an_empty_table_and_no_row_goes_in_twice(runs, tmp_path) -> None:
    run, _ = runs
    catalogue = write_csv(tmp_path / "cat.csv", [])
    summary = run_local(catalogue, tmp_path / "out", model=run, backend="torch")
    assert (summary.rows, summary.scored, summary.failed) == (0, 0, 0)
    df = pd.read_parquet(tmp_path / "out")
    assert len(df) == 0 and list(df.columns) == [*FIXED_COLUMNS, *GENRES]
    one = write_csv(tmp_path / "one.csv", [("1", "", str(SAMPLE / "3500822.jpg"))])
    run_local(one, tmp_path / "one", model=run, backend="torch")
    with Output.open(tmp_path / "one", catalogue_fingerprint=catalogue_fingerprint(one),
                     model_fingerprint=model_fingerprint(run), genres=GENRES) as out:
        assert out.done == out.skip == {0} and not out.failed
        with pytest.raises(PosterGenreError, match="row 0 is already in the table"):
            out.write_part(pa.Table.from_pandas(table(tmp_path / "one"), preserve_index=False))
