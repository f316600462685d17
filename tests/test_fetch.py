"""data/fetch.py, the package's one HTTP fetcher, against real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import raw_tcp_server
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from postergenre.data.fetch import FetchConfig, FetchError, fetch, fetch_many, is_url

FAST = FetchConfig(concurrency=4, timeout=5, deadline=5, retries=1, backoff=0.01)
BODY = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8  # bytes; decoding is not the fetcher's


def image(body: bytes = BODY, delay: float = 0.0) -> Callable[[Request], Response]:
    def handler(request: Request) -> Response:
        time.sleep(delay)
        return Response(body, content_type="image/jpeg")
    return handler


def raw_server(reply: bytes) -> str:
    """A server that answers every connection with `reply` and closes it (for bodies shorter
    than their Content-Length)."""
    def answer(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(reply)

    return raw_tcp_server(answer)[0] + "/p.jpg"


def test_a_body_comes_back_whole(http: HTTPServer) -> None:
    http.expect_request("/ok").respond_with_handler(image())
    assert fetch(http.url_for("/ok"), FAST) == BODY


def test_a_404_fails_at_once_naming_the_url(http: HTTPServer) -> None:
    http.expect_request("/gone").respond_with_data("no", status=404)
    url = http.url_for("/gone")
    with pytest.raises(FetchError) as info:
        fetch(url, FAST)
    assert str(info.value) == f"{url}: HTTP 404 NOT FOUND"
    assert info.value.url == url and not info.value.retry
    assert [r.path for r, _ in http.log] == ["/gone"]  # a 4xx is not retried


def test_a_500_is_retried_then_succeeds(http: HTTPServer) -> None:
    calls: list[int] = []

    def flaky(request: Request) -> Response:
        calls.append(1)
        return Response("oops", status=500) if len(calls) == 1 else image()(request)

    http.expect_request("/flaky").respond_with_handler(flaky)
    assert fetch(http.url_for("/flaky"), FAST) == BODY and len(calls) == 2


def test_a_503_every_time_says_how_many_attempts(http: HTTPServer) -> None:
    http.expect_request("/down").respond_with_data("oops", status=503)
    with pytest.raises(FetchError, match="HTTP 503 .*, after 2 attempts$") as info:
        fetch(http.url_for("/down"), FAST)
    assert info.value.retry


def test_a_stalled_server_fails_at_the_deadline(http: HTTPServer) -> None:
    http.expect_request("/stall").respond_with_handler(image(delay=3))
    start = time.monotonic()
    with pytest.raises(FetchError, match=r"longer than 0\.5 s"):
        fetch(http.url_for("/stall"), FetchConfig(timeout=10, deadline=0.5, retries=0))
    assert time.monotonic() - start < 2


def test_a_dripping_body_fails_at_the_deadline(http: HTTPServer) -> None:
    def drip(request: Request) -> Response:
        def chunks() -> Iterator[bytes]:
            for i in range(0, len(BODY), 8):
                time.sleep(0.05)  # every read is well within `timeout`
                yield BODY[i:i + 8]
        return Response(chunks(), content_type="image/jpeg")

    http.expect_request("/drip").respond_with_handler(drip)
    start = time.monotonic()
    with pytest.raises(FetchError, match="timed out: took longer than 0.6 s"):
        fetch(http.url_for("/drip"), FetchConfig(timeout=1, deadline=0.6, retries=0))
    assert time.monotonic() - start < 2


def test_an_html_page_is_not_an_image(http: HTTPServer) -> None:
    http.expect_request("/html").respond_with_data("<html>Not found</html>",
                                                   content_type="text/html; charset=utf-8")
    with pytest.raises(FetchError, match="content type text/html, not an image$"):
        fetch(http.url_for("/html"), FAST)


def test_untyped_and_octet_stream_bodies_are_accepted(http: HTTPServer) -> None:
    http.expect_request("/bin").respond_with_data(BODY, content_type="application/octet-stream")
    assert fetch(http.url_for("/bin"), FAST) == BODY
    url = raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
    assert fetch(url, FAST) == b"abc"


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
def test_a_body_over_the_limit_is_refused(http: HTTPServer, chunked: bool) -> None:
    body = BODY * 4
    http.expect_request("/big").respond_with_handler(
        lambda r: Response(iter([body]) if chunked else body, content_type="image/jpeg"))
    config = FetchConfig(max_bytes=len(body) - 1, retries=0)
    with pytest.raises(FetchError, match=f"larger than the {len(body) - 1:,}-byte limit"):
        fetch(http.url_for("/big"), config)
    assert fetch(http.url_for("/big"), FetchConfig(max_bytes=len(body))) == body


def test_a_truncated_body_is_a_broken_connection() -> None:
    url = raw_server(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n"
                     b"Connection: close\r\n\r\n" + BODY[:500])
    with pytest.raises(FetchError, match="connection error .*after 2 attempts") as info:
        fetch(url, FAST)
    assert info.value.retry


def test_a_redirect_loop_fails_and_a_redirect_is_followed(http: HTTPServer) -> None:
    http.expect_request("/loop").respond_with_data("", status=302, headers={"Location": "/loop"})
    http.expect_request("/moved").respond_with_data("", status=301, headers={"Location": "/ok"})
    http.expect_request("/ok").respond_with_handler(image())
    with pytest.raises(FetchError, match="more than 5 redirects"):
        fetch(http.url_for("/loop"), FAST)
    assert fetch(http.url_for("/moved"), FAST) == BODY


def test_a_malformed_url_is_one_line_naming_it() -> None:  # more in test_odd_input.py
    url = "http://host:1:1/x"
    with pytest.raises(FetchError) as info:
        fetch(url, FetchConfig(retries=0))
    assert str(info.value) == f"{url}: malformed URL (Invalid port: '1:1')"
    assert not info.value.retry


def test_an_unreachable_host_and_a_path_are_errors() -> None:
    with pytest.raises(FetchError, match="unreachable"):
        fetch("http://127.0.0.1:9/x.jpg", FetchConfig(retries=0))
    with pytest.raises(FetchError, match="not an http"):
        fetch("posters/1.jpg")
    assert is_url("HTTPS://x.org/a.jpg") and not is_url("x.jpg") and not is_url(None)


def test_fetch_works_under_a_running_event_loop(http: HTTPServer) -> None:
    http.expect_request("/ok").respond_with_handler(image())

    async def inside() -> bytes:
        return fetch(http.url_for("/ok"), FAST)

    assert asyncio.run(inside()) == BODY


# --- fetch_many ---------------------------------------------------------------------------


def test_fetch_many_keeps_input_order_under_different_latencies(http: HTTPServer) -> None:
    n = 12
    for i in range(n):  # the first URLs are the slowest
        http.expect_request(f"/p{i}").respond_with_handler(
            image(body=b"%d" % i, delay=0.02 * (n - i)))
    http.expect_request("/gone").respond_with_data("no", status=404)
    urls = [http.url_for(f"/p{i}") for i in range(n)]
    urls.insert(5, http.url_for("/gone"))
    results = list(fetch_many(urls, FetchConfig(concurrency=4, retries=0)))
    assert [i for i, _ in results] == list(range(n + 1))
    bodies = [r for _, r in results]
    assert isinstance(bodies[5], FetchError) and "HTTP 404" in str(bodies[5])
    assert bodies[:5] + bodies[6:] == [b"%d" % i for i in range(n)]


def test_fetch_many_bounds_requests_in_flight_and_reads_its_input_lazily(
        http: HTTPServer) -> None:
    lock, now, peak = threading.Lock(), [0], [0]

    def counting(request: Request) -> Response:
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        time.sleep(0.05)
        with lock:
            now[0] -= 1
        return Response(BODY, content_type="image/jpeg")

    http.expect_request("/c").respond_with_handler(counting)
    taken = [0]

    def urls() -> Iterator[str]:
        for _ in range(30):
            taken[0] += 1
            yield http.url_for("/c")

    stream = fetch_many(urls(), FetchConfig(concurrency=3, retries=0))
    first = next(stream)
    time.sleep(0.3)  # the fetcher may run ahead, but only by a bounded number of URLs
    assert first == (0, BODY) and taken[0] <= 2 * 3 + 2
    rest = list(stream)
    assert len(rest) == 29 and all(body == BODY for _, body in rest)
    assert 2 <= peak[0] <= 3


def test_stopping_fetch_many_early_cancels_and_ends_its_thread(http: HTTPServer) -> None:
    http.expect_request("/fast").respond_with_handler(image())
    http.expect_request("/slow").respond_with_handler(image(delay=5))
    urls = [http.url_for("/fast")] + [http.url_for("/slow")] * 20
    before = {t.ident for t in threading.enumerate()}
    start = time.monotonic()
    for i, body in fetch_many(urls, FetchConfig(concurrency=4)):
        assert (i, body) == (0, BODY)
        break
    assert time.monotonic() - start < 3  # the slow requests in flight were cancelled
    time.sleep(0.1)
    assert not [t for t in threading.enumerate()
                if t.name == "fetch-many" and t.ident not in before]


def test_an_error_in_the_input_reaches_the_caller(http: HTTPServer) -> None:
    http.expect_request("/ok").respond_with_handler(image())

    def urls() -> Iterator[str]:
        yield http.url_for("/ok")
        raise ValueError("bad row")

    got = []
    with pytest.raises(ValueError, match="bad row"):
        for item in fetch_many(urls(), FAST):
            got.append(item)
    assert got == [(0, BODY)]


def test_fetch_many_of_nothing_is_nothing() -> None:
    assert list(fetch_many([])) == []
