"""A headless Chromium driven through its DevTools protocol over a pipe (``--remote-debugging-pipe``: the browser
reads commands on fd 3 and writes replies on fd 4, NUL-separated JSON), so the browser tests need no websocket or
WebDriver package: Debian's ``chromium`` and the standard library. Loaded by the tests with importlib."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
# What this sandbox needs (no setuid sandbox, no GPU, no network chatter), plus a throwaway profile per browser.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe"]


# Page-side helpers, plain JS function literals called through Page.call.
CENTRE_OF = """(selector) => {
  const e = document.querySelector(selector);
  e.scrollIntoView({block: "center"});
  const r = e.getBoundingClientRect();
  return [r.x + r.width / 2, r.y + r.height / 2];
}"""
CHOOSE = """(selector, value) => {
  const s = document.querySelector(selector);
  if (![...s.options].some((o) => o.value === value)) return false;
  s.focus();
  s.value = value;
  s.dispatchEvent(new Event("change", {bubbles: true}));
  return true;
}"""


class CDPError(RuntimeError):
    pass


def _moved_up(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Chromium:
    """One browser process; :meth:`page` opens a tab to drive."""

    def __init__(self, width: int = 1280, height: int = 900, binary: Path = CHROMIUM):
        self.profile = tempfile.mkdtemp(prefix="spai-chromium-")
        commands_r, self._commands_w = os.pipe()
        self._replies_r, replies_w = os.pipe()
        # the browser expects its ends at fds 3 and 4: move them above 9 first, so that dup2 never meets itself
        # (a no-op that would keep close-on-exec) nor overwrites the other end
        commands_r, replies_w = (_moved_up(fd) for fd in (commands_r, replies_w))

        def child_fds() -> None:
            os.dup2(commands_r, 3)
            os.dup2(replies_w, 4)

        self.proc = subprocess.Popen(
            [str(binary), *FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
             "about:blank"], preexec_fn=child_fds, close_fds=False, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(commands_r)
        os.close(replies_w)
        self._next_id = 0
        self._lock = threading.Lock()
        self._replies: dict[int, queue.Queue] = {}
        self.events: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.send("Browser.getVersion", timeout=30)

    def _read(self) -> None:
        buf = b""
        while chunk := os.read(self._replies_r, 1 << 16):
            buf += chunk
            *messages, buf = buf.split(b"\0")
            for raw in messages:
                msg = json.loads(raw)
                if "id" in msg and msg["id"] in self._replies:
                    self._replies[msg["id"]].put(msg)
                else:
                    self.events.put(msg)

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 60) -> dict[str, Any]:
        with self._lock:
            self._next_id += 1
            mid = self._next_id
            self._replies[mid] = queue.Queue()
            msg: dict[str, Any] = {"id": mid, "method": method, "params": params or {}}
            if session:
                msg["sessionId"] = session
            os.write(self._commands_w, json.dumps(msg).encode() + b"\0")
        try:
            reply = self._replies[mid].get(timeout=timeout)
        except queue.Empty:
            raise CDPError(f"{method}: no reply in {timeout} s") from None
        finally:
            self._replies.pop(mid, None)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def page(self) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        return Page(self, session)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
            self.proc.wait(timeout=10)
        except (CDPError, OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            for fd in (self._commands_w, self._replies_r):
                try:
                    os.close(fd)
                except OSError:
                    pass
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Page:
    """One tab: navigate, evaluate, click, type, screenshot; JS errors and console errors are collected."""

    def __init__(self, browser: Chromium, session: str):
        self.browser, self.session = browser, session
        self.errors: list[str] = []
        self._pending: list[dict[str, Any]] = []
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")

    def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 60) -> dict[str, Any]:
        return self.browser.send(method, params, self.session, timeout)

    def _drain(self, until: str | None = None, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.browser.events.get(timeout=0.05 if until is None else max(0.01, deadline -
                                                                                    time.monotonic()))
            except queue.Empty:
                if until is None:
                    return
                raise CDPError(f"no {until} in {timeout} s") from None
            if msg.get("sessionId") != self.session:
                continue
            self._note(msg)
            if until and msg.get("method") == until:
                return

    def _note(self, msg: dict[str, Any]) -> None:
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            self.errors.append(f"{params['entry'].get('source')}: {params['entry'].get('text')}")

    def navigate(self, url: str, timeout: float = 120) -> float:
        """Load ``url`` and wait for its load event; returns the seconds it took."""
        t0 = time.perf_counter()
        self.send("Page.navigate", {"url": url})
        self._drain("Page.loadEventFired", timeout)
        return time.perf_counter() - t0

    def evaluate(self, expression: str, timeout: float = 60) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, timeout)
        self._drain()
        if "exceptionDetails" in result:
            raise CDPError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def call(self, function: str, *args: Any, timeout: float = 60) -> Any:
        """Call a JS function literal with JSON arguments: the script stays a plain string (no f-string brace
        escaping, no quoting of values into code)."""
        return self.evaluate(f"({function})(...{json.dumps(list(args))})", timeout)

    def click(self, selector: str) -> None:
        """A real mouse click at the centre of the element (scrolled into view first)."""
        box = self.call(CENTRE_OF, selector)
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left",
                                                   "clickCount": 1})
        self._drain()

    def type_into(self, selector: str, text: str) -> None:
        self.call("(s) => document.querySelector(s).focus()", selector)
        self.send("Input.insertText", {"text": text})
        self._drain()

    def choose(self, selector: str, value: str) -> None:
        """Pick an option of a <select> as a user's pick does (value set, then its change event)."""
        if not self.call(CHOOSE, selector, value):
            raise CDPError(f"{selector} has no option {value!r}")

    def settle(self) -> float:
        """Wait for the next painted frame; returns the milliseconds since the call."""
        return self.evaluate("new Promise(r => { const t = performance.now(); "
                             "requestAnimationFrame(() => setTimeout(() => r(performance.now() - t), 0)); })")

    def screenshot(self, full_page: bool = False) -> bytes:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            size = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params["clip"] = {"x": 0, "y": 0, "width": size[0], "height": min(size[1], 6000), "scale": 1}
        return base64.b64decode(self.send("Page.captureScreenshot", params)["data"])
