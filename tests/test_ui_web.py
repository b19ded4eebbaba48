"""`corral ui --web`: 127.0.0.1 only, a token or 403, nothing from the network, a real browser."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser import CHROMIUM, screenshot
from tests.daemon_proc import DaemonProcess
from tests.test_pool import wait_for
from tests.ui_plan import daemon_for

pytestmark = pytest.mark.slow

UI = [sys.executable, "-m", "corral.cli", "ui"]


@pytest.fixture
def web(tmp_path: Path, repo: Path) -> Iterator[tuple[DaemonProcess, str]]:
    """A daemon with two running agents, and `corral ui --web` on a free port: (daemon, URL)."""
    sleeper = {"*": ["--stream-json", "--tokens", "10", "--sleep", "60"]}
    with daemon_for(tmp_path, sleeper) as d:
        with d.client() as c:
            c.init_parallel_scheduler(repo_path=str(repo), config={"agentType": "fake"})
            c.parallel_add_tasks(
                tasks=[{"id": "alpha", "title": "a"}, {"id": "beta", "title": "b"}]
            )
            c.session_start()
        proc = subprocess.Popen(
            [*UI, "--web", "--port", "0", "--socket", str(d.socket)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            match = re.search(r"http://127\.0\.0\.1:(\d+)/\?token=\S+", line)
            assert match, f"no URL with a token in {line!r}"
            port = int(match.group(1))
            wait_for(lambda: _listening(port), 30, "the web server to listen")
            yield d, match.group(0)
        finally:
            proc.terminate()
            proc.wait(20)
            if proc.stdout is not None:
                proc.stdout.close()
            with d.client() as c:
                c.session_pause()
                c.parallel_stop_all()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
    except OSError:
        return False
    return True


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_every_request_without_the_token_is_refused(web: tuple[DaemonProcess, str]) -> None:
    _, url = web
    base, token = url.split("/?token=")
    for path in ("/", "/ws", "/static/js/textual.js", "/static/css/xterm.css"):
        assert _status(base + path) == 403, path
        assert _status(f"{base}{path}?token=not-{token}") == 403, path
    assert _status(url) == 200
    with urllib.request.urlopen(url, timeout=10) as r:
        page = r.read().decode()
        cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    # Every asset the page names is on this server.
    for ref in re.findall(r"""(?:src|href)=["']([^"']+)""", page):
        assert ref.startswith(base + "/static/"), ref
    assert "googleapis" not in page
    # Only 127.0.0.1 listens: the port is not reachable on another address of the host.
    port = int(base.rsplit(":", 1)[1])
    others = {str(a[4][0]) for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    for address in others - {"127.0.0.1"}:
        with pytest.raises(OSError):
            socket.create_connection((address, port), 2).close()


@pytest.mark.browser
@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="needs chromium (.ci/run installs it)")
def test_chromium_shows_the_run_screen(web: tuple[DaemonProcess, str], tmp_path: Path) -> None:
    _, url = web
    base = url.split("/?token=")[0]
    out = tmp_path / "web.png"
    started = time.monotonic()
    requested = screenshot(url, out, until="document.body.classList.contains('-first-byte')")
    assert out.stat().st_size > 20_000  # a drawn screen, not an empty page
    # Nothing came from the network: every request went to this server.
    assert requested and all(u.startswith((base, "data:", "about:")) for u in requested), requested
    kept = Path("/tmp") / "corral-ui-web.png"  # for a person to look at
    shutil.copy(out, kept)
    print(json.dumps({"screenshot": str(kept), "secs": round(time.monotonic() - started, 1)}))
