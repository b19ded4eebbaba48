"""Headless Chromium driven over the DevTools protocol: load a page, wait, take a screenshot.

`chromium --screenshot` shoots as soon as the page has loaded, before a
websocket app has drawn anything; this waits for a condition in the page
(a JavaScript expression) and for the drawing to settle, then shoots. Only
aiohttp (a dependency of textual-serve) is used to speak the protocol.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    # xterm.js draws with WebGL; without a GPU that needs the software rasterizer.
    "--enable-unsafe-swiftshader",
]


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except FileNotFoundError:
        return []


async def _page(port: str) -> str:
    """The DevTools websocket URL of the browser's first page."""
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                pages = [t for t in await r.json() if t.get("type") == "page"]
            if pages:
                return str(pages[0]["webSocketDebuggerUrl"])
            await asyncio.sleep(0.05)


async def _shoot(port: str, url: str, until: str, requested: list[str]) -> bytes:
    ws_url = await _page(port)
    ids = itertools.count(1)
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:

        async def call(method: str, **params: Any) -> dict[str, Any]:
            ident = next(ids)
            await ws.send_str(json.dumps({"id": ident, "method": method, "params": params}))
            while True:
                message = json.loads((await ws.receive()).data)
                if message.get("method") == "Network.requestWillBeSent":
                    requested.append(message["params"]["request"]["url"])
                if message.get("id") == ident:
                    if "error" in message:
                        raise RuntimeError(f"{method}: {message['error']}")
                    result: dict[str, Any] = message["result"]
                    return result

        async def shot() -> bytes:
            return base64.b64decode((await call("Page.captureScreenshot", format="png"))["data"])

        await call("Page.enable")
        blank = await shot()
        await call("Network.enable")
        await call("Page.navigate", url=url)
        while True:
            done = await call("Runtime.evaluate", expression=until, returnByValue=True)
            if done["result"].get("value") is True:
                break
            await asyncio.sleep(0.2)
        # The terminal draws on a canvas, with nothing to query: shoot until two shots
        # in a row agree and hold much more than the empty page did.
        last = b""
        while True:
            data = await shot()
            if data == last and len(data) > 3 * len(blank):
                return data
            last = data
            await asyncio.sleep(0.5)


async def _bounded(port: str, url: str, until: str, secs: float, requested: list[str]) -> bytes:
    async with asyncio.timeout(secs):
        return await _shoot(port, url, until, requested)


def screenshot(
    url: str,
    out: Path,
    *,
    until: str = "true",
    size: tuple[int, int] = (1280, 800),
    timeout: float = 60.0,
) -> list[str]:
    """Load `url` in headless Chromium, wait until `until` is true in the page, save a PNG.

    The shot is taken once the page is drawn and stops changing (two shots
    0.5 s apart agree). Returns the URL of every request the page made.
    """
    requested: list[str] = []
    user_dir = Path(tempfile.mkdtemp(prefix="chr", dir="/tmp"))
    proc = subprocess.Popen(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={user_dir}",
            "--remote-debugging-port=0",
            f"--window-size={size[0]},{size[1]}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = user_dir / "DevToolsActivePort"  # written once the browser listens
        deadline = time.monotonic() + timeout
        while len(lines := _lines(port_file)) < 2:  # the port, then the path: complete
            if time.monotonic() > deadline or proc.poll() is not None:
                raise TimeoutError("chromium did not start its DevTools server")
            time.sleep(0.05)
        port = lines[0]
        out.write_bytes(asyncio.run(_bounded(port, url, until, timeout, requested)))
        return requested
    finally:
        proc.kill()
        proc.wait(10)
        shutil.rmtree(user_dir, ignore_errors=True)
