"""The package's one HTTP fetcher: image URLs to bytes, checked at the transport level.

- `fetch(url)`: one URL, synchronously (what `predict` does for a URL on its command line);
- `fetch_many(urls)`: a stream of URLs from synchronous code (a pipeline stage, a Ray task),
  fetched concurrently, results in input order, memory bounded however long the stream;
- `fetch_async(client, url)` with `make_client(config)`: the same inside an event loop
  (`data download`).

Every attempt is checked: the HTTP status (non-2xx fails; 5xx and 429 are retried), the content
type (`image/*`, `application/octet-stream` or none: an HTML error page fails), the declared and
actual size, a timeout per read and a deadline per attempt (a server that stalls or drips bytes
fails after `deadline` seconds), malformed URLs and redirect loops. Timeouts and broken
connections are retried too, with exponential backoff and jitter. A failure is a `FetchError`,
one line: `<url>: <reason>`. Decoding the image is the caller's (`data.images.open_poster`).

httpx is imported on first use, so that commands which never fetch do not pay for it.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import random
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar, cast

from postergenre.errors import PosterGenreError

if TYPE_CHECKING:
    import ssl

    import httpx

T = TypeVar("T")


@dataclass(frozen=True)
class FetchConfig:
    concurrency: int = 16  # simultaneous requests
    timeout: float = 15.0  # longest wait for any one read (connect, headers, a chunk)
    deadline: float = 30.0  # longest one whole attempt may take, however bytes trickle
    retries: int = 2  # extra attempts on 5xx, 429, timeouts, broken connections
    backoff: float = 0.5  # seconds before the first retry, doubled each time (+-50% jitter)
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 5
    user_agent: str = "postergenre/1"

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise PosterGenreError(f"concurrency must be at least 1, not {self.concurrency}")
        if self.retries < 0:
            raise PosterGenreError(f"retries must be 0 or more, not {self.retries}")
        if not (self.timeout > 0 and self.deadline > 0):
            raise PosterGenreError("timeout and deadline must be positive")


class FetchError(PosterGenreError):
    """A URL that could not be fetched: `<url>: <reason>`; `retry` says whether the failure
    was transient (a 5xx, 429, timeout or broken connection)."""

    def __init__(self, url: str, reason: str, retry: bool = False) -> None:
        super().__init__(f"{url}: {reason}")
        self.url, self.reason, self.retry = url, reason, retry


def is_url(text: object) -> bool:
    """An http(s) URL (as opposed to a path)."""
    return isinstance(text, str) and text.lower().startswith(("http://", "https://"))


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One SSL context for every client (loading the CA bundle takes milliseconds)."""
    import httpx

    return httpx.create_ssl_context()


def make_client(config: FetchConfig) -> httpx.AsyncClient:
    """The async client every caller uses: redirects followed up to `max_redirects`, a read
    timeout of `timeout`, up to `concurrency` requests at once (more wait for a free
    connection), each on a kept-alive connection of its own (`_Shards`)."""
    import httpx

    return httpx.AsyncClient(
        timeout=httpx.Timeout(config.timeout), follow_redirects=True,
        max_redirects=config.max_redirects, headers={"User-Agent": config.user_agent},
        transport=_shards(config.concurrency),
    )


def _shards(n: int) -> httpx.AsyncBaseTransport:
    """`n` single-connection transports, each serving one request at a time.

    The same keep-alive reuse as one shared pool of `n` connections, without httpcore's pool
    bookkeeping, whose cost grows with requests x connections: with one shared pool,
    `data download` was 2.9x slower at concurrency 64 than with one connection per request
    in flight (docs/benchmarks.md, Download).
    """
    import httpx

    class Released(httpx.AsyncByteStream):
        """A response body that hands its transport back when it is closed."""

        def __init__(self, stream: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
            self.stream, self.release = stream, release

        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in self.stream:
                yield chunk

        async def aclose(self) -> None:
            try:
                await self.stream.aclose()
            finally:
                self.release()

    class Shards(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
            self.all = [httpx.AsyncHTTPTransport(verify=_ssl_context(), limits=limits)
                        for _ in range(n)]
            self.free = list(self.all)  # the last used first: its connection is warm
            self.slots = asyncio.Semaphore(n)

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            await self.slots.acquire()
            shard = self.free.pop()
            released = False

            def release() -> None:
                nonlocal released
                if not released:
                    released = True
                    self.free.append(shard)
                    self.slots.release()

            try:
                response = await shard.handle_async_request(request)
            except BaseException:
                release()
                raise
            assert isinstance(response.stream, httpx.AsyncByteStream)
            return httpx.Response(response.status_code, headers=response.headers,
                                  stream=Released(response.stream, release),
                                  extensions=response.extensions)

        async def aclose(self) -> None:
            for shard in self.all:
                await shard.aclose()

    return Shards()


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    text = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


async def _attempt(client: httpx.AsyncClient, url: str, config: FetchConfig) -> bytes:
    """One attempt: the body, or FetchError saying why and whether to retry."""
    import httpx

    def fail(reason: str, retry: bool = False) -> FetchError:
        return FetchError(url, reason, retry)

    try:
        async with asyncio.timeout(config.deadline), client.stream("GET", url) as r:
            if not r.is_success:
                retry = r.status_code >= 500 or r.status_code == 429
                raise fail(f"HTTP {r.status_code} {r.reason_phrase}".strip(), retry)
            ctype = r.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype and not ctype.startswith("image/") and ctype != "application/octet-stream":
                raise fail(f"content type {ctype}, not an image")
            limit = f"larger than the {config.max_bytes:,}-byte limit"
            declared = r.headers.get("content-length", "")
            if declared.isascii() and declared.isdigit() and int(declared) > config.max_bytes:
                raise fail(f"{limit} (declares {int(declared):,} bytes)")
            body = bytearray()
            async for chunk in r.aiter_bytes():
                body += chunk
                if len(body) > config.max_bytes:
                    raise fail(limit)
            return bytes(body)
    except TimeoutError:
        raise fail(f"timed out: took longer than {config.deadline:g} s (deadline)",
                   retry=True) from None
    except httpx.TimeoutException as e:
        raise fail(f"timed out after {config.timeout:g} s ({type(e).__name__})",
                   retry=True) from None
    except httpx.TooManyRedirects:
        raise fail(f"more than {config.max_redirects} redirects (a loop?)") from None
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as e:
        raise fail(f"malformed URL ({_one_line(e).split(': ', 1)[-1]})") from None
    except httpx.ConnectError as e:
        raise fail(f"unreachable ({_one_line(e)})", retry=True) from None
    except httpx.TransportError as e:
        raise fail(f"connection error ({_one_line(e)})", retry=True) from None
    except (ValueError, UnicodeError) as e:  # what the URL parser and IDNA raise
        raise fail(f"malformed URL ({_one_line(e).split(': ', 1)[-1]})") from None


async def fetch_async(client: httpx.AsyncClient, url: str, config: FetchConfig) -> bytes:
    """The body of `url` (retries included), or FetchError naming the URL and the reason;
    a reason retried to the end ends with ", after N attempts"."""
    if not is_url(url):
        raise FetchError(str(url)[:200], "not an http(s) URL")
    for attempt in range(config.retries + 1):
        try:
            return await _attempt(client, url, config)
        except FetchError as e:
            if not e.retry or attempt == config.retries:
                if e.retry and config.retries:
                    raise FetchError(url, f"{e.reason}, after {attempt + 1} attempts",
                                     retry=True) from None
                raise
        await asyncio.sleep(config.backoff * 2**attempt * random.uniform(0.5, 1.5))
    raise AssertionError("unreachable")  # the loop returns or raises


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, even under a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: queue.Queue[tuple[bool, Any]] = queue.Queue()

    def work() -> None:
        try:
            box.put((True, asyncio.run(coro)))
        except BaseException as e:  # handed to the caller's thread
            box.put((False, e))

    threading.Thread(target=work, name="fetch", daemon=True).start()
    ok, value = box.get()
    if not ok:
        raise value
    return value


def fetch(url: str, config: FetchConfig = FetchConfig()) -> bytes:
    """The body of one URL, synchronously; FetchError (one line) on failure."""

    async def one() -> bytes:
        async with make_client(replace(config, concurrency=1)) as client:
            return await fetch_async(client, url, config)

    return _run(one())


# ---------------------------------------------------------------- many URLs from sync code


_END = object()


class _Stream:
    """The asynchronous side of `fetch_many`; every method runs on its event loop."""

    def __init__(self, urls: Iterable[str], config: FetchConfig) -> None:
        self.urls, self.config = iter(urls), config
        self.client: httpx.AsyncClient | None = None
        self.feeder: asyncio.Task[None] | None = None
        self.tasks: deque[asyncio.Task[bytes | FetchError]] = deque()

    async def start(self) -> None:
        c = self.config.concurrency
        self.client = make_client(self.config)
        self.slots = asyncio.Semaphore(c)  # requests in flight
        self.room = asyncio.Semaphore(2 * c)  # started and not yet handed over
        self.order: asyncio.Queue[Any] = asyncio.Queue()  # tasks in input order, then _END
        self.feeder = asyncio.create_task(self._feed())

    async def _feed(self) -> None:
        try:
            i = 0
            while True:
                await self.room.acquire()
                # The input may block (a lazy reader): never on the loop's own thread.
                url = await asyncio.to_thread(next, self.urls, _END)
                if url is _END:
                    break
                task = asyncio.create_task(self._one(cast(str, url)))
                self.tasks.append(task)
                self.order.put_nowait((i, task))
                i += 1
        except Exception as e:  # the input's own error, raised in the caller's thread
            self.order.put_nowait(e)
        else:
            self.order.put_nowait(_END)

    async def _one(self, url: str) -> bytes | FetchError:
        assert self.client is not None  # made by start()
        async with self.slots:
            try:
                return await fetch_async(self.client, url, self.config)
            except FetchError as e:
                return e

    async def next(self) -> tuple[int, bytes | FetchError] | None:
        item = await self.order.get()
        if item is _END:
            return None
        if isinstance(item, Exception):
            raise item
        i, task = item
        result = await task
        self.tasks.popleft()
        self.room.release()
        return i, result

    async def close(self) -> None:
        pending = [t for t in (self.feeder, *self.tasks) if t is not None]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self.client is not None:
            await self.client.aclose()


def fetch_many(urls: Iterable[str], config: FetchConfig = FetchConfig()
               ) -> Iterator[tuple[int, bytes | FetchError]]:
    """(position in `urls`, body or FetchError) for each URL, in input order.

    `urls` is consumed lazily (in a helper thread, so it may block); at most
    `config.concurrency` requests are in flight and at most twice that many URLs are started
    and not yet yielded, so memory stays bounded however long the input. The requests run on
    an event loop in a background thread, so any synchronous code can call this; stopping the
    iteration early (break, close(), an exception) cancels what is in flight and ends the
    thread.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fetch-many", daemon=True)
    thread.start()
    stream = _Stream(urls, config)

    def call(coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result()
        except BaseException:  # an interrupt while waiting: stop the coroutine too
            future.cancel()
            raise

    try:
        call(stream.start())
        while (item := call(stream.next())) is not None:
            yield item
    finally:
        try:
            call(stream.close())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()


