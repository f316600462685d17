"""End to end in headless Chromium: upload a poster through the page, read the genre bars.

Offline means offline here too: Chromium starts with its background networking switched off
(component updates, safe browsing, sync, metrics, QUIC, DNS prefetch; every host name but the
loopback ones resolves to nothing), Selenium Manager is kept out (the driver and browser
paths are given, SE_AVOID_STATS is set), and a test runs the browser test under
`strace -f -e trace=socket,connect` and fails on any connection to an address outside
loopback (but for the route probe of a UDP connect(), which sends nothing: see ROUTE_PROBES).

Set POSTERGENRE_SCREENSHOT=page.png to keep a screenshot of the page after the upload.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CHROMEDRIVER, CHROMIUM, make_poster, make_run, running_server

from postergenre.predict import Predictor
from postergenre.serve import create_app

STRACE = shutil.which("strace")
UNDER_STRACE = "POSTERGENRE_UNDER_STRACE"  # set in the traced run, so that it does not recurse
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="chromium/chromedriver absent"),
]


def test_upload_through_the_page_shows_bars_best_first(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    predictor = Predictor.load(make_run(tmp_path / "run"), backend="torch")
    poster = make_poster(tmp_path / "poster.jpg", seed=3)
    expected = predictor.predict_files([poster])[0]
    ranked = [predictor.genres[j] for j in np.argsort(-expected)]

    with running_server(create_app(predictor)) as url:
        browser.get(url + "/")
        browser.find_element(By.ID, "file").send_keys(str(poster))
        WebDriverWait(browser, 20).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#bars li.bar"))
        bars = browser.find_elements(By.CSS_SELECTOR, "#bars li.bar")
        genres = [b.get_attribute("data-genre") for b in bars]
        top = [b.get_attribute("data-genre") for b in bars if "top" in b.get_attribute("class")]
        hits = {b.get_attribute("data-genre") for b in bars if "hit" in b.get_attribute("class")}
        poster_shown = browser.find_element(By.ID, "poster").get_attribute("naturalWidth")
        if os.environ.get("POSTERGENRE_SCREENSHOT"):
            browser.save_screenshot(str(Path(os.environ["POSTERGENRE_SCREENSHOT"])))
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]

    assert genres == ranked  # every genre, the model's top genre first
    assert top == ranked[:3]
    assert hits == {g for g, p, t in zip(predictor.genres, expected, predictor.thresholds,
                                         strict=True) if p >= t}
    assert int(poster_shown) == 182  # the uploaded poster is displayed beside the bars
    assert not errors, errors


SOCKET = re.compile(r"^(\d+) socket\(AF_INET6?, (SOCK_\w+).*\) = (\d+)")
CONNECT = re.compile(r'^(\d+) connect\((\d+), \{sa_family=AF_INET6?, sin6?_port=htons\((\d+)\)'
                     r'.*?(?:inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)")')
# Chromium and chromedriver ask the kernel for a route to Google's public DNS address (their
# IPv6 reachability probe) with connect() on a UDP socket: that sends no packet, so it is
# allowed, but only as exactly that (a datagram socket, port 443, these two addresses).
ROUTE_PROBES = {ipaddress.ip_address("2001:4860:4860::8888"), ipaddress.ip_address("8.8.8.8")}


def outside_loopback(trace: str) -> list[str]:
    """The connect() calls in an `strace -f -e trace=socket,connect` log to an address outside
    loopback, but for the route probes above (a UDP connect() sends nothing)."""
    kinds: dict[tuple[str, str], str] = {}  # (thread, fd) -> SOCK_STREAM / SOCK_DGRAM
    found = []
    for line in trace.splitlines():
        if made := SOCKET.match(line):
            kinds[made.group(1), made.group(3)] = made.group(2)
            continue
        match = CONNECT.match(line)
        if match is None:
            continue  # AF_UNIX, AF_NETLINK...: local by nature
        tid, fd, port, v4, v6 = match.groups()
        address = ipaddress.ip_address(v4 or v6)
        mapped = getattr(address, "ipv4_mapped", None)
        if address.is_loopback or (mapped is not None and mapped.is_loopback):
            continue
        if (address in ROUTE_PROBES and port == "443"
                and kinds.get((tid, fd), "").startswith("SOCK_DGRAM")):
            continue
        found.append(line.strip())
    return found


def test_outside_loopback_parser() -> None:
    trace = "\n".join([
        "16 socket(AF_INET6, SOCK_DGRAM, IPPROTO_IP) = 9",
        '16 connect(9, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), '
        'inet_pton(AF_INET6, "2001:4860:4860::8888", &sin6_addr), sin6_scope_id=0}, 28) = 0',
        "17 socket(AF_INET, SOCK_STREAM, IPPROTO_TCP) = 9",
        '17 connect(9, {sa_family=AF_INET, sin_port=htons(443), sin_addr=inet_addr("8.8.8.8")}'
        ', 16) = 0',
        '12 connect(3, {sa_family=AF_INET, sin_port=htons(80), sin_addr=inet_addr("127.0.0.1")}'
        ', 16) = 0',
        '12 connect(4, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), '
        'inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = 0',
        '13 connect(5, {sa_family=AF_UNIX, sun_path="/run/dbus"}, 110) = -1 ENOENT',
        '14 connect(6, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.0.0.2")}'
        ', 16) = 0',
        '15 connect(7, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), '
        'inet_pton(AF_INET6, "2607:f8b0::200e", &sin6_addr), sin6_scope_id=0}, 28) = -1',
    ])
    assert [line.split()[0] for line in outside_loopback(trace)] == ["17", "14", "15"]


@pytest.mark.skipif(not STRACE, reason="strace absent")
@pytest.mark.skipif(bool(os.environ.get(UNDER_STRACE)), reason="already traced")
def test_the_browser_test_connects_to_nothing_outside_loopback(tmp_path) -> None:
    log = tmp_path / "connect.log"
    env = {**os.environ, UNDER_STRACE: "1"}
    result = subprocess.run(
        [STRACE, "-f", "-qq", "-e", "trace=socket,connect", "-o", str(log), sys.executable, "-m",
         "pytest", f"{__file__}::test_upload_through_the_page_shows_bars_best_first", "-q",
         "-p", "no:cacheprovider"],
        capture_output=True, text=True, timeout=300, env=env, cwd=Path(__file__).parents[1],
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout
    trace = log.read_text()
    assert "127.0.0.1" in trace  # the trace does see the browser talking to the server
    assert outside_loopback(trace) == []
