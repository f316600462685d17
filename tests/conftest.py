"""Shared fixtures and helpers: the real data folder (tests skip cleanly without it), synthetic
posters, datasets and runs, a served run, the command line through its real entry point, and
an offline headless browser."""

from __future__ import annotations

import contextlib
import io
import shutil
import socket
import struct
import sys
import threading
import time
import warnings
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import Result

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `fuzz` (minutes long) run only when `-m` names them: `pytest -m fuzz`."""
    if "fuzz" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="the long fuzz run: select it with -m fuzz")
    for item in items:
        if "fuzz" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests write feature caches and ONNX graphs into a temporary folder, not the user's."""
    import os

    os.environ["POSTERGENRE_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache folder of the test's own and one torch thread: model tests stay independent
    and deterministic."""
    import torch

    monkeypatch.setenv("POSTERGENRE_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """../shared/data next to the repository; skips the test when it is absent."""
    if not (REAL_DATA / "posters").is_dir():
        pytest.skip("real data (../shared/data) not available")
    return REAL_DATA


def make_poster(path: Path, seed: int = 0, size: tuple[int, int] = (182, 268)) -> Path:
    """Write a small random-colour JPEG poster (width, height) and return its path."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, 3)
    arr = np.clip(base + rng.normal(0, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, "JPEG", quality=85)
    return path


def make_tiny_run(path: Path, genres: list[str], size: tuple[int, int] = (80, 80),
                  seed: int = 0) -> Path:
    """A custom-cnn run folder with random weights on small inputs (fast to load and run)."""
    import torch

    from postergenre.io import save_weights
    from postergenre.models import create_model
    from postergenre.run import RunConfig, save_thresholds, write_config

    torch.manual_seed(seed)
    model = create_model("custom-cnn", len(genres), input_size=size)
    save_weights(model, path / "weights.safetensors")
    write_config(path, RunConfig(model="custom-cnn", model_kwargs={"input_size": list(size)},
                                 genres=tuple(genres), input_size=size))
    save_thresholds(path, {g: 0.5 for g in genres})
    return path


def make_small_dataset(root: Path, genres: list[str], sizes: tuple[int, int, int] = (12, 6, 3)
                       ) -> Path:
    """A prepared dataset folder of 48 x 64 random posters, genres in turn; sizes are the
    train/val/test counts."""
    import pandas as pd

    from postergenre.data.dataset import write_genres, write_split

    write_genres(root / "ds", genres)
    for name, n, offset in zip(("train", "val", "test"), sizes, (0, 100, 200), strict=True):
        rows = [{"imdbId": offset + i, "title": f"t{i}", "genres": genres[i % len(genres)],
                 "poster": str(make_poster(root / "p" / f"{offset + i}.jpg", offset + i,
                                           (48, 64)))} for i in range(n)]
        write_split(root / "ds", name, pd.DataFrame(rows), genres)
    return root / "ds"


def train_features(dataset: Path, out: Path, size: tuple[int, int], model: str =
                   "efficientnet-lite0", backend: str = "torch", **options) -> Path:
    """A features-mode run (a head on cached features) at `size`; head settings such as
    head=, pool=, hidden= go to the model, the rest to the training settings."""
    from postergenre.train.fit import fit
    from postergenre.train.recipes import make_config

    kwargs = {"input_size": list(size)}
    kwargs.update({k: options.pop(k) for k in ("head", "pool", "hidden", "dropout")
                   if k in options})
    fit(dataset, out, make_config(mode="features", model=model, model_kwargs=kwargs, **options),
        backend=backend)
    return out


def train_finetune(dataset: Path, out: Path, init: Path, backend: str = "torch",
                   resume: bool = False, **options) -> Path:
    """A finetune-mode run from the features run `init`."""
    from postergenre.train.fit import fit
    from postergenre.train.recipes import make_config

    config = None if resume else make_config(mode="finetune", model="efficientnet-lite0",
                                             init=str(init), **options)
    fit(None if resume else dataset, out, config, backend=backend, resume=resume)
    return out


def make_dataset(root: Path, sizes: dict[str, int] | None = None, seed: int = 0,
                 genres: Sequence[str] = ("Action", "Comedy", "Drama")) -> Path:
    """A prepared dataset folder of 60 x 90 synthetic posters with random multi-labels (each
    genre with probability 0.4, Drama when none); sizes are per split."""
    import pandas as pd

    from postergenre.data.dataset import write_genres, write_split

    sizes = sizes or {"train": 24, "val": 8, "test": 8}
    rng = np.random.default_rng(seed)
    write_genres(root, list(genres))
    i = 0
    for split, n in sizes.items():
        rows = []
        for _ in range(n):
            labels = [g for g in genres if rng.random() < 0.4] or ["Drama"]
            path = make_poster(root / "posters" / f"{i}.jpg", seed=i, size=(60, 90))
            rows.append({"imdbId": i, "poster": str(path), "title": f"t{i}",
                         "genres": "|".join(labels)})
            i += 1
        write_split(root, split, pd.DataFrame(rows), list(genres))
    return root


def striped_poster(path: Path, seed: int = 0) -> Path:
    """A poster with structure (bright and dark bands), so a CNN's maps vary over it."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 60, (268, 182, 3), dtype=np.uint8)
    arr[40:120, 20:160] = rng.integers(150, 255, 3, dtype=np.uint8)
    Image.fromarray(arr).save(path, "JPEG", quality=90)
    return path


def bomb_png() -> bytes:
    """A valid tiny PNG whose header claims 30000 x 30000 pixels."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes of header fields
    ihdr[4:12] = struct.pack(">II", 30000, 30000)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


# --- a served run: five genres, uneven thresholds ------------------------------------------

RUN_GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance"]
RUN_INPUT_SIZE = (96, 80)


def make_run(path: Path, seed: int = 0) -> Path:
    """A tiny custom-cnn run folder (RUN_GENRES, RUN_INPUT_SIZE) with random weights spread so
    that probabilities differ and depend on the image, and uneven thresholds."""
    import torch

    from postergenre.io import save_weights
    from postergenre.models import create_model
    from postergenre.run import RunConfig, save_thresholds, write_config

    torch.manual_seed(seed)
    model = create_model("custom-cnn", len(RUN_GENRES), input_size=RUN_INPUT_SIZE)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():  # spread the outputs: distinct probabilities that depend on the image
        last.weight.mul_(300)
        last.bias.copy_(torch.linspace(-1.5, 1.5, len(RUN_GENRES)))
    save_weights(model, path / "weights.safetensors")
    write_config(path, RunConfig(model="custom-cnn",
                                 model_kwargs={"input_size": list(RUN_INPUT_SIZE)},
                                 genres=tuple(RUN_GENRES), input_size=tuple(RUN_INPUT_SIZE)))
    save_thresholds(path, dict(zip(RUN_GENRES, [0.2, 0.4, 0.5, 0.6, 0.8], strict=True)))
    return path


@contextlib.contextmanager
def running_server(app: Any) -> Iterator[str]:
    """Run `app` under uvicorn in a thread on a free loopback port; yields its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


# --- the command line, through the installed command's entry point --------------------------


def run_cli(*args: object, input: str | None = None,
            env: dict[str, str] | None = None) -> Result:
    """Run `postergenre ARGS` in-process through `postergenre.cli.main`, the function the
    installed `postergenre` command calls, so its error handling is the one users meet (a
    library error is `error: ...` on stderr and exit 1, not an exception): a CliRunner Result
    (exit_code, stdout, stderr, output)."""
    from typer.testing import CliRunner

    from postergenre.cli import main

    runner = CliRunner()
    argv, showwarning = sys.argv, warnings.showwarning  # main() replaces showwarning
    code: int = 0
    with runner.isolation(input=input, env=env) as (out, err, output):
        sys.argv = ["postergenre", *map(str, args)]
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            sys.argv, warnings.showwarning = argv, showwarning
            sys.stdout.flush()
            sys.stderr.flush()
            stdout, stderr, both = out.getvalue(), err.getvalue(), output.getvalue()
    return Result(runner=runner, stdout_bytes=stdout, stderr_bytes=stderr, output_bytes=both,
                  return_value=None, exit_code=code, exception=None, exc_info=None)


def cli(*args: object) -> tuple[int, str, str]:
    """`run_cli` as (exit code, stdout, stderr)."""
    result = run_cli(*args)
    return result.exit_code, result.stdout, result.stderr


def assert_one_line_error(err: str, *names: object) -> None:
    """`err` is one line, `error: ...`, naming each of `names`; no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for name in names:
        assert str(name) in lines[0]


def prepare_args(labels: Path, posters: Path, out: Path) -> list[object]:
    return ["data", "prepare", "--labels", labels, "--posters", posters, "--out", out]


# --- headless Chromium, offline ------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
OFFLINE_FLAGS = (
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-quic", "--disable-domain-reliability", "--disable-client-side-phishing-detection",
    "--disable-default-apps", "--disable-extensions", "--disable-breakpad",
    "--no-first-run", "--no-default-browser-check", "--no-pings", "--metrics-recording-only",
    "--safebrowsing-disable-auto-update", "--dns-prefetch-disable",
    "--disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication,"
    "CertificateTransparencyComponentUpdater,InterestFeedContentSuggestions,NetworkTimeServiceQuerying",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
)


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A headless Chromium (Selenium) that reaches nothing but loopback."""
    monkeypatch.setenv("SE_AVOID_STATS", "true")  # no usage statistics from Selenium
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # with the driver path below: no Selenium Manager
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", *OFFLINE_FLAGS,
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
                 "--window-size=1000,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def threaded_http_server() -> Iterator[Any]:
    """A pytest-httpserver on 127.0.0.1 that answers requests in parallel, one per module."""
    from pytest_httpserver import HTTPServer

    srv = HTTPServer(host="127.0.0.1", threaded=True)
    srv.start()
    yield srv
    srv.clear()
    if srv.is_running():
        srv.stop()


@pytest.fixture
def http(threaded_http_server: Any) -> Any:
    """The module's threaded server, its expectations cleared for this test."""
    threaded_http_server.clear()
    return threaded_http_server


def raw_tcp_server(on_connection: Any) -> tuple[str, socket.socket]:
    """A TCP server on 127.0.0.1 that hands every accepted connection to `on_connection` (then
    closes it), for replies no HTTP server would send; returns its base URL and the listening
    socket (close it to stop the server)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def loop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                on_connection(conn)

    threading.Thread(target=loop, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", listener

