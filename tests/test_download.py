"""`postergenre data download` against a real HTTP server on 127.0.0.1 that injects faults."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_poster, raw_tcp_server
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from postergenre.cli import main as cli_main
from postergenre.data.download import (
    DownloadConfig,
    PosterLink,
    download_links,
    download_posters,
    read_poster_links,
)

HEADER = "imdbId,Imdb Link,Title,IMDB Score,Genre,Poster\n"
FAST = DownloadConfig(concurrency=4, timeout=5, retries=1, backoff=0.01)


@pytest.fixture(scope="module")
def posters(tmp_path_factory) -> dict[int, bytes]:
    """Ten small synthetic JPEG posters by id."""
    folder = tmp_path_factory.mktemp("src")
    return {i: make_poster(folder / f"{i}.jpg", seed=i, size=(40, 60)).read_bytes()
            for i in range(1, 11)}


def serve_posters(http: HTTPServer, posters: dict[int, bytes], delay: float = 0.0) -> None:
    def handler(request: Request) -> Response:
        time.sleep(delay)
        imdb_id = int(request.path.rsplit("/", 1)[1].removesuffix(".jpg"))
        if imdb_id not in posters:
            return Response("Not Found", status=404)
        return Response(posters[imdb_id], content_type="image/jpeg")

    http.clear()
    http.expect_request(re.compile(r"/p/\d+\.jpg")).respond_with_handler(handler)


def write_csv(path: Path, http: HTTPServer, ids, title: str = "A Movie (2014)") -> Path:
    lines = [f'{i},http://www.imdb.com/title/tt{i},"{title}",6.1,Drama,{http.url_for(f"/p/{i}.jpg")}'
             for i in ids]
    path.write_text(HEADER + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def fetch(links: list[PosterLink], out: Path, config: DownloadConfig = FAST):
    return asyncio.run(download_links(links, out, config))


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    old = sys.argv
    sys.argv = ["postergenre", *map(str, args)]
    try:
        cli_main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
    return code, capsys.readouterr().err


# ---------------------------------------------------------------- happy path and resume


def test_downloads_every_poster_and_reruns_without_requests(tmp_path, http, posters, capsys):
    serve_posters(http, posters)
    csv_path = write_csv(tmp_path / "movies.csv", http, posters)
    code, err = run_cli(["data", "download", csv_path, "--out", tmp_path / "out"], capsys)
    assert code == 0, err
    for i, data in posters.items():
        assert (tmp_path / "out" / "posters" / f"{i}.jpg").read_bytes() == data
    report = json.loads((tmp_path / "out" / "download-report.json").read_text())
    assert report["downloaded"] == len(posters) and report["failures"] == []

    http.log.clear()
    code, _ = run_cli(["data", "download", csv_path, "--out", tmp_path / "out"], capsys)
    assert code == 0
    assert http.log == []  # everything present and valid: nothing fetched again
    report = json.loads((tmp_path / "out" / "download-report.json").read_text())
    assert report["skipped"] == len(posters) and report["downloaded"] == 0


def test_rerun_replaces_invalid_posters_and_removes_stale_temp_files(tmp_path, http, posters):
    serve_posters(http, posters)
    out = tmp_path / "out"
    (out / "posters").mkdir(parents=True)
    (out / "posters" / "1.jpg").write_bytes(posters[1][:200])  # truncated by someone else
    (out / "posters" / "2.jpg").write_bytes(posters[2])  # good: kept, not fetched
    (out / "posters" / ".3.jpg.abc123.tmp").write_bytes(b"partial")  # left by a killed run
    links = [PosterLink(i, "t", http.url_for(f"/p/{i}.jpg")) for i in (1, 2, 3)]
    summary = fetch(links, out)
    assert (summary.downloaded, summary.skipped, summary.failed) == (2, 1, 0)
    assert (out / "posters" / "1.jpg").read_bytes() == posters[1]
    assert sorted(p.name for p in (out / "posters").iterdir()) == ["1.jpg", "2.jpg", "3.jpg"]
    assert sorted(r.path for r, _ in http.log) == ["/p/1.jpg", "/p/3.jpg"]


# ---------------------------------------------------------------- injected faults


@pytest.fixture
def resetter(posters):
    """A raw TCP server that aborts connections with a RST: always on /always, on the first
    request only on other paths (later ones get a poster)."""
    seen: list[str] = []

    def answer(conn: socket.socket) -> None:
        request = b""
        while b"\r\n\r\n" not in request and (chunk := conn.recv(4096)):
            request += chunk
        path = request.split(b" ")[1].decode() if request else ""
        seen.append(path)
        if path == "/always" or seen.count(path) == 1:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        body = posters[1]
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nConnection: close"
                     b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    url, listener = raw_tcp_server(answer)
    yield url
    listener.close()


def _drip(body: bytes):
    def handler(request: Request) -> Response:
        def chunks():
            for i in range(0, len(body), 8):
                time.sleep(0.1)
                yield body[i:i + 8]
        return Response(chunks(), content_type="image/jpeg")
    return handler


def _then(first, second):
    """A handler answering with `first` on the first request, `second` afterwards."""
    calls = []

    def handler(request: Request) -> Response:
        calls.append(1)
        return (first if len(calls) == 1 else second)(request)
    return handler


def _sleep(seconds: float):
    def handler(request: Request) -> Response:
        time.sleep(seconds)
        return Response(b"late", content_type="image/jpeg")
    return handler


def test_faults_are_retried_or_rejected_with_a_reason(tmp_path, http, posters, resetter):
    ok = posters[1]
    big = make_poster(tmp_path / "big.jpg", seed=3, size=(400, 600)).read_bytes()
    jpeg = lambda data: lambda r: Response(data, content_type="image/jpeg")  # noqa: E731
    cases = {
        "ok": (jpeg(ok), None),
        "missing": (lambda r: Response("no", status=404), "HTTP 404"),
        "forbidden": (lambda r: Response("no", status=403), "HTTP 403"),
        "flaky": (_then(lambda r: Response("oops", status=500), jpeg(ok)), None),
        "down": (lambda r: Response("oops", status=503), "HTTP 503"),
        "slow": (_sleep(3), "timed out"),
        "drip": (_drip(ok), "timed out"),
        "truncated": (jpeg(ok[: len(ok) // 2]), "truncated"),
        "html": (lambda r: Response("<html>Not found</html>", content_type="text/html"),
                 "content type text/html"),
        "html-as-jpeg": (jpeg(b"<html><body>Error</body></html>"), "not an image"),
        "json-type": (lambda r: Response(ok, content_type="application/json"),
                      "content type application/json"),
        "oversized": (jpeg(big), "limit"),
        "oversized-chunked": (lambda r: Response(iter([big]), content_type="image/jpeg"),
                              "limit"),
        "loop": (lambda r: Response("", status=302, headers={"Location": "/f/loop"}),
                 "redirects"),
        "redirected": (lambda r: Response("", status=301, headers={"Location": "/f/ok"}), None),
        "pixel": (jpeg(make_poster(tmp_path / "px.jpg", size=(1, 1)).read_bytes()), "too small"),
    }
    for name, (handler, _) in cases.items():
        http.expect_request(f"/f/{name}").respond_with_handler(handler)
    links = [PosterLink(i, name, http.url_for(f"/f/{name}")) for i, name in enumerate(cases, 1)]
    cases |= {"reset-once": (None, None), "reset": (None, "connection error")}
    links += [PosterLink(len(links) + 1, "reset-once", f"{resetter}/once"),
              PosterLink(len(links) + 2, "reset", f"{resetter}/always")]
    config = DownloadConfig(concurrency=8, timeout=1, retries=1, backoff=0.01,
                            max_bytes=len(big) - 1)
    summary = fetch(links, tmp_path / "out", config)

    reasons = {f.title: f.reason for f in summary.failures}
    expected = {name: why for name, (_, why) in cases.items() if why}
    assert reasons.keys() == expected.keys(), reasons
    for name, why in expected.items():
        assert why in reasons[name], (name, reasons[name])
    assert "after 2 attempts" in reasons["down"] and "after" not in reasons["missing"]
    hits = [r.path for r, _ in http.log]
    assert hits.count("/f/missing") == 1 and hits.count("/f/down") == 2  # no retry on 4xx
    present = sorted(p.name for p in (tmp_path / "out" / "posters").iterdir())
    good = [i for i, name in enumerate(cases, 1) if not cases[name][1]]
    assert present == sorted(f"{i}.jpg" for i in good)
    for i in good:
        assert (tmp_path / "out" / "posters" / f"{i}.jpg").read_bytes() == ok


# ---------------------------------------------------------------- the CSV


def test_reads_kaggle_csv_robustly(tmp_path):
    rows = [
        b"10,http://www.imdb.com/title/tt10,Am\xe9lie (2001),8.3,Comedy,http://h/10.jpg",  # cp1252
        "11,l,L'enlÌ¬vement (2014),,Drama,http://h/11.jpg".encode(),  # mojibake kept
        b"10,l,Duplicate,5,Drama,http://h/other.jpg",
        b"12,l,No poster,5,Drama,",
        b"abc,l,Bad id,5,Drama,http://h/x.jpg",
        b"13,l,Not http,5,Drama,ftp://h/13.jpg",
    ]
    path = tmp_path / "movies.csv"
    path.write_bytes(HEADER.encode() + b"\n".join(rows) + b"\n")
    links, problems = read_poster_links(path)
    assert links == [PosterLink(10, "Amélie (2001)", "http://h/10.jpg"),
                     PosterLink(11, "L'enlÌ¬vement (2014)", "http://h/11.jpg")]
    assert [(p.imdb_id, p.reason.split(":")[0]) for p in problems] == [
        (12, "no poster URL"), (None, "invalid imdbId"), (13, "not an http(s) URL")]


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"imdbId,Title,Genre\n1,A,Drama\n", "Poster"),
    (b"a;b;c\n1;2;3\n", "missing column"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01", "not a CSV"),
    (HEADER.encode(), "no data rows"),
])
def test_bad_csv_is_a_one_line_error(tmp_path, capsys, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    code, err = run_cli(["data", "download", path, "--out", tmp_path / "out"], capsys)
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert "Traceback" not in err


def test_unwritable_output_folder_is_a_one_line_error(tmp_path, http, posters, capsys):
    csv_path = write_csv(tmp_path / "movies.csv", http, [1])
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, err = run_cli(["data", "download", csv_path, "--out", blocker / "out"], capsys)
    assert code == 1 and err.startswith("error: ") and "not writable" in err
    assert err.count("\n") == 1


def test_failures_give_exit_code_1_and_a_report(tmp_path, http, posters, capsys):
    serve_posters(http, posters)
    csv_path = write_csv(tmp_path / "movies.csv", http, [1, 2, 99])  # 99: not served
    with open(csv_path, "a") as f:
        f.write("7,l,No URL,1,Drama,\n")
    code, err = run_cli(["data", "download", csv_path, "--out", tmp_path / "out",
                         "--retries", "0"], capsys)
    assert code == 1 and "2 downloaded" in err and "2 failed" in err
    report = json.loads((tmp_path / "out" / "download-report.json").read_text())
    assert [(f["imdbId"], f["reason"]) for f in report["failures"]] == [
        (7, "no poster URL"), (99, "HTTP 404 NOT FOUND")]


# ---------------------------------------------------------------- crash safety


@pytest.mark.slow
def test_killed_run_resumes_with_every_poster_exactly_once(tmp_path, http, posters):
    many = {i: posters[1 + i % len(posters)] for i in range(100, 140)}
    serve_posters(http, many, delay=0.15)
    csv_path = write_csv(tmp_path / "movies.csv", http, many)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "postergenre", "data", "download", str(csv_path),
           "--out", str(out), "--concurrency", "2"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 60
        while len(list(out.glob("posters/*.jpg"))) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    before = {p.name for p in out.glob("posters/*.jpg")}
    assert 5 <= len(before) < len(many)
    for name in before:  # whatever was written is complete
        assert (out / "posters" / name).read_bytes() == many[int(name[:-4])]

    serve_posters(http, many)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    files = sorted(p.name for p in (out / "posters").iterdir())
    assert files == sorted(f"{i}.jpg" for i in many)  # each once, no temp file left
    for i, data in many.items():
        assert (out / "posters" / f"{i}.jpg").read_bytes() == data
    report = json.loads((out / "download-report.json").read_text())
    assert report["skipped"] == len(before)
    refetched = {r.path.rsplit("/", 1)[1] for r, _ in http.log if r.path.startswith("/p/")}
    assert not refetched & before


# ---------------------------------------------------------------- real data


@pytest.mark.slow
@pytest.mark.realdata
def test_real_excerpt_reads_every_row_and_downloads_real_posters(real_data, tmp_path, http):
    source = real_data / "MovieGenre-excerpt.csv"
    with open(source, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1949
    # Point each URL at the local server, keeping every other byte of the file.
    base = http.url_for("/")
    lines = source.read_bytes().split(b"\n")
    rewritten = [lines[0]] + [
        line.replace(b"https://images-na.ssl-images-amazon.com/",
                     f"{base}{line.split(b',', 1)[0].decode()}/".encode())
        for line in lines[1:]
    ]
    csv_path = tmp_path / "MovieGenre.csv"
    csv_path.write_bytes(b"\n".join(rewritten))

    available = {int(p.stem) for p in (real_data / "posters").glob("*.jpg")}

    def handler(request: Request) -> Response:
        imdb_id = int(request.path.split("/")[1])
        if imdb_id not in available:
            return Response("Not Found", status=404)
        return Response((real_data / "posters" / f"{imdb_id}.jpg").read_bytes(),
                        content_type="image/jpeg")

    http.expect_request(re.compile(r"/\d+/images/.*")).respond_with_handler(handler)

    links, problems = read_poster_links(csv_path)
    assert problems == []
    assert [(link.imdb_id, link.title) for link in links] == \
        [(int(r["imdbId"]), r["Title"]) for r in rows]
    assert sum(not link.title.isascii() for link in links) == 116

    summary = download_posters(csv_path, tmp_path / "out",
                               DownloadConfig(concurrency=16, retries=0))
    expected = [int(r["imdbId"]) for r in rows if int(r["imdbId"]) in available]
    assert summary.downloaded == len(expected) > 0
    assert summary.failed == len(rows) - len(expected)
    assert {f.reason for f in summary.failures} == {"HTTP 404 NOT FOUND"}
    for i in expected:
        assert (tmp_path / "out" / "posters" / f"{i}.jpg").read_bytes() == \
            (real_data / "posters" / f"{i}.jpg").read_bytes()
