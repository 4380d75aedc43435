"""Headless Chromium for tests that look at a live page: wait until its DOM says something, take a screenshot.

Driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON messages ended by NUL, Chromium reads
fd 3 and writes fd 4), so it needs no driver, no package and no debugging port: only Debian's chromium.
Usable against any URL, e.g. a real dashboard:

    dom = wait_for_text(url, 'document.querySelectorAll(\'tr[data-state="joined"]\').length >= 3', timeout=600)
"""

from __future__ import annotations

import base64
import json
import os
import queue
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Union

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.path.exists(p)), None)
# Without the background-networking flags, its own connections are refused by the closed network.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")

# A JavaScript expression that is truthy once the page is as wanted, or texts that its body must all show.
Condition = Union[str, Iterable[str]]


def _expression(condition: Condition) -> str:
    if isinstance(condition, str):
        return condition
    texts = json.dumps(list(condition))
    return f"{texts}.every((text) => document.body && document.body.innerText.includes(text))"


class Browser:
    """One headless Chromium with one page of the given size; a context manager."""

    def __init__(self, size: tuple[int, int] = (1280, 800)) -> None:
        assert CHROMIUM, "chromium is not installed; scripts/test.sh installs it"
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-")
        self._stderr = open(Path(self._profile.name) / "stderr.log", "wb")
        # The shell moves our stdin/stdout pipes to the fds 3 and 4 that the pipe mode reads and writes.
        self._process = subprocess.Popen(
            ["/bin/sh", "-c", 'exec "$@" 3<&0 4>&1 0</dev/null 1>/dev/null', "sh", CHROMIUM, *FLAGS,
             "--remote-debugging-pipe", f"--user-data-dir={self._profile.name}", "about:blank"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, start_new_session=True)
        self._messages: queue.Queue[Optional[dict]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True, name="chromium-pipe").start()
        self._next_id = 0
        self._session: Optional[str] = None
        try:
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            self.call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1,
                      mobile=False)
        except BaseException:
            self.close()
            raise

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._process.stdout.fileno(), 65536):
            *messages, buffer = (buffer + chunk).split(b"\0")
            for message in messages:
                self._messages.put(json.loads(message))
        self._messages.put(None)

    def call(self, method: str, timeout: float = 30.0, **params: Any) -> dict:
        """Sends one command (to the page once attached) and returns its result; events are not kept."""
        self._next_id += 1
        command = {"id": self._next_id, "method": method, "params": params}
        if self._session:
            command["sessionId"] = self._session
        self._process.stdin.write(json.dumps(command).encode() + b"\0")
        self._process.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self._messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"chromium did not answer {method} within {timeout:.0f} s") from None
            if message is None:
                log = Path(self._profile.name, "stderr.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"chromium exited during {method}:\n{log}")
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str, timeout: float = 30.0) -> None:
        """Navigates and waits for the load event's end."""
        error = self.call("Page.navigate", url=url).get("errorText")
        if error:
            raise RuntimeError(f"{url}: {error}")
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'", timeout)

    def wait_for(self, condition: Condition, timeout: float = 30.0) -> str:
        """Polls the condition; returns the page's HTML once it holds, else says what the page showed."""
        expression = _expression(condition)
        deadline = time.monotonic() + timeout
        while not self.evaluate(f"Boolean({expression})"):
            if time.monotonic() > deadline:
                shown = self.evaluate("document.body ? document.body.innerText : ''")
                raise TimeoutError(f"after {timeout:.0f} s, still not {expression!r}; the page shows:\n{shown}")
            time.sleep(0.1)
        return self.evaluate("document.documentElement.outerHTML")

    def screenshot(self, path: Union[str, Path]) -> Path:
        """A PNG of the page's viewport."""
        path = Path(path)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self) -> None:
        if self._process.poll() is None:
            self._session = None  # a command to the browser, not to the page
            try:
                self.call("Browser.close", timeout=5)
            except (OSError, RuntimeError, TimeoutError):
                pass
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
        self._stderr.close()
        self._profile.cleanup()

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_for_text(url: str, condition: Condition, timeout: float = 30.0, size: tuple[int, int] = (1280, 800)) -> str:
    """Loads the URL and returns its DOM (HTML) once the condition holds."""
    with Browser(size) as browser:
        browser.open(url, timeout)
        return browser.wait_for(condition, timeout)


def screenshot(url: str, path: Union[str, Path], size: tuple[int, int] = (1280, 800),
               condition: Optional[Condition] = None, timeout: float = 30.0) -> Path:
    """Loads the URL, waits for the condition if one is given, and saves a PNG of the page."""
    with Browser(size) as browser:
        browser.open(url, timeout)
        if condition is not None:
            browser.wait_for(condition, timeout)
        return browser.screenshot(path)
