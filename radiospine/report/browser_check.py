"""Open report pages in headless Chromium and check what a reader would see.

Per page: the expected ``<section id=...>`` elements exist, are visible and have a heading; no console errors
(``console.error``, uncaught exceptions, failed loads, blocked content); no request leaves the folder (every
request is a ``file:`` or ``data:`` URL); every image decodes; the page holds no ``<script>`` element (the report
has none of its own, so one would be an injected string) and opens no dialog (``alert``). Optionally a screenshot.

How: Chromium (Debian's ``chromium`` package) is driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: the browser reads JSON commands, each ended by a NUL byte, from file descriptor 3
and writes replies and events to descriptor 4). That needs no websocket client, no port and no extra package,
and the events are exact: ``Runtime.consoleAPICalled``, ``Runtime.exceptionThrown``, ``Log.entryAdded``,
``Network.requestWillBeSent``, ``Page.javascriptDialogOpening``. The browser runs in its own session (process
group) with a temporary profile; it is closed, or killed with its group, on exit.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import select
import shutil
import signal
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from radiospine.report.render import PAGE_SECTIONS

if TYPE_CHECKING:
    from typing import Self

logger = logging.getLogger(__name__)

#: Executables tried, in order, when none is given.
CHROMIUM_NAMES: tuple[str, ...] = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS: tuple[str, ...] = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--no-default-browser-check",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe",
)
WINDOW_SIZE = (1280, 2000)
_PAGE_STATE_SCRIPT = """(() => {
  const sections = Array.from(document.querySelectorAll('section[id]')).map(s => ({
    id: s.id,
    visible: s.offsetHeight > 0 && getComputedStyle(s).display !== 'none'
             && getComputedStyle(s).visibility !== 'hidden',
    heading: ((s.querySelector('h2') || {}).textContent || '').trim()}));
  const images = Array.from(document.images).map(i => ({src: i.getAttribute('src') || '',
    ok: i.complete && i.naturalWidth > 0}));
  const links = Array.from(document.querySelectorAll('a[href]')).map(a => a.href);
  return {title: document.title, sections: sections, images: images, links: links,
          scripts: document.scripts.length, textLength: document.body ? document.body.innerText.length : 0};
})()"""


class BrowserError(RuntimeError):
    """Chromium could not be started, stopped answering, or a page could not be opened."""


@dataclass(frozen=True)
class PageReport:
    """What the browser saw on one page.

    Attributes:
        url: the page's ``file://`` URL.
        title: the document title.
        sections: ids of the sections that are visible and have a heading.
        missing_sections: expected section ids that are absent, hidden or without a heading.
        console_errors: console errors, uncaught exceptions, failed or blocked loads, dialogs opened.
        external_requests: requested URLs that are neither ``file:`` nor ``data:``.
        broken_images: ``src`` (first 60 characters) of images that did not decode.
        scripts: the number of ``<script>`` elements in the page.
        links: absolute URLs of the page's links.
        text_length: characters of visible text.
    """

    url: str
    title: str
    sections: tuple[str, ...]
    missing_sections: tuple[str, ...]
    console_errors: tuple[str, ...]
    external_requests: tuple[str, ...]
    broken_images: tuple[str, ...]
    scripts: int
    links: tuple[str, ...]
    text_length: int

    @property
    def problems(self) -> list[str]:
        """Everything wrong with the page, one line each (empty when the page is fine)."""
        problems = [f"section {name!r} missing, hidden or without a heading" for name in self.missing_sections]
        problems += [f"console error: {text}" for text in self.console_errors]
        problems += [f"request leaves the report folder: {url}" for url in self.external_requests]
        problems += [f"image does not decode: {src}" for src in self.broken_images]
        if self.scripts:
            problems.append(f"{self.scripts} <script> element(s) in the page")
        if self.text_length == 0:
            problems.append("the page shows no text")
        return problems


def find_chromium() -> str | None:
    """The path of the first of :data:`CHROMIUM_NAMES` on ``PATH``, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """A headless Chromium driven over the DevTools pipe; use as a context manager.

    ``executable``: the browser (None: :func:`find_chromium`); ``timeout``: seconds to wait for any one answer;
    ``window``: the viewport's (width, height) in CSS pixels, which is also the screenshot's size.
    """

    def __init__(self, executable: str | None = None, timeout: float = 60.0,
                 window: tuple[int, int] = WINDOW_SIZE) -> None:
        self.executable = executable
        self.timeout = timeout
        self.window = window

    def __enter__(self) -> Self:
        executable = self.executable or find_chromium()
        if executable is None:
            raise BrowserError(f"no Chromium found (tried {', '.join(CHROMIUM_NAMES)}); install Debian's package: "
                               f"apt-get install -y chromium")
        self._profile = tempfile.TemporaryDirectory(prefix="radiospine-chromium-")
        self._log_path = Path(self._profile.name) / "chromium.log"
        self._buffer = b""
        self._events: list[dict[str, Any]] = []
        self._next_id = 0
        commands_read, commands_write = os.pipe()
        replies_read, replies_write = os.pipe()
        # The child's ends go to descriptors 3 and 4; dup them high first so no dup2 overwrites the other.
        child_commands = fcntl.fcntl(commands_read, fcntl.F_DUPFD_CLOEXEC, 10)
        child_replies = fcntl.fcntl(replies_write, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(commands_read)
        os.close(replies_write)
        log = os.open(self._log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            arguments = [executable, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile.name}", "about:blank"]
            self._pid = os.posix_spawn(executable, arguments, dict(os.environ), setsid=True, file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log, 1),
                (os.POSIX_SPAWN_DUP2, log, 2),
                (os.POSIX_SPAWN_DUP2, child_commands, 3),
                (os.POSIX_SPAWN_DUP2, child_replies, 4),
            ])
        except OSError as exc:
            os.close(commands_write)
            os.close(replies_read)
            self._profile.cleanup()
            raise BrowserError(f"could not start {executable}: {exc}") from None
        finally:
            os.close(log)
            os.close(child_commands)
            os.close(child_replies)
        self._commands = commands_write
        self._replies = replies_read
        try:
            target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                self._call(f"{domain}.enable", session=self._session)
            width, height = self.window
            self._call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                              "deviceScaleFactor": 1, "mobile": False},
                       session=self._session)
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop()

    # -- protocol ----------------------------------------------------------------------------------------------

    def _call(self, method: str, params: Mapping[str, Any] | None = None, *, session: str | None = None) -> dict:
        """Send one command and return its result; events that arrive meanwhile are kept."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": dict(params or {})}
        if session is not None:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._commands, data):]
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._receive(deadline, f"the answer to {method}")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method} failed: {reply['error'].get('message', reply['error'])}")
                return reply.get("result", {})
            self._events.append(reply)

    def _receive(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrowserError(f"Chromium gave no {waiting_for} within {self.timeout:g} s{self._log_tail()}")
            ready, _, _ = select.select([self._replies], [], [], remaining)
            if ready:
                chunk = os.read(self._replies, 1 << 20)
                if not chunk:
                    raise BrowserError(f"Chromium closed the DevTools pipe while waiting for {waiting_for}"
                                       f"{self._log_tail()}")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _wait_for_event(self, method: str, deadline: float) -> None:
        """Wait for ``method`` from the page; a dialog (``alert``) blocks the page, so it is dismissed (and kept
        as an event, which :meth:`open` reports)."""
        handled = 0
        while True:
            dialogs = [e for e in self._events if e.get("method") == "Page.javascriptDialogOpening"]
            for _ in dialogs[handled:]:
                self._call("Page.handleJavaScriptDialog", {"accept": False}, session=self._session)
            handled = len(dialogs)
            for event in self._events:
                if event.get("method") == method and event.get("sessionId") == self._session:
                    return
            self._events.append(self._receive(deadline, f"{method} event"))

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            lines = self._log_path.read_text(errors="replace").strip().splitlines()[-5:]
            if lines:
                return "; its log ends: " + " | ".join(lines)
        return ""

    def _stop(self) -> None:
        self.timeout = min(self.timeout, 5.0)
        with contextlib.suppress(BrowserError, OSError, ValueError):
            self._call("Browser.close")
        for descriptor in (self._commands, self._replies):
            with contextlib.suppress(OSError):
                os.close(descriptor)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            pid, _ = os.waitpid(self._pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.05)
        else:
            logger.warning("Chromium (pid %d) did not exit; killing its process group", self._pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._pid, signal.SIGKILL)
            os.waitpid(self._pid, 0)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._pid, signal.SIGKILL)  # helper processes left behind by the browser, if any
        self._profile.cleanup()

    # -- pages -------------------------------------------------------------------------------------------------

    def open(self, url: str, expected_sections: Sequence[str] = (), screenshot: Path | None = None) -> PageReport:
        """Load ``url``, wait for its load event, and report what the page shows (see :class:`PageReport`).
        ``screenshot``: write a PNG of the viewport (the top of the page) there."""
        self._events = [event for event in self._events if event.get("sessionId") != self._session]
        result = self._call("Page.navigate", {"url": url}, session=self._session)
        if result.get("errorText"):
            raise BrowserError(f"could not open {url}: {result['errorText']}")
        self._wait_for_event("Page.loadEventFired", time.monotonic() + self.timeout)
        state = self._call("Runtime.evaluate", {"expression": _PAGE_STATE_SCRIPT, "returnByValue": True},
                           session=self._session)
        if "exceptionDetails" in state:
            raise BrowserError(f"inspecting {url} failed: {state['exceptionDetails'].get('text')}")
        page = state["result"]["value"]
        if screenshot is not None:
            image = self._call("Page.captureScreenshot", {"format": "png"}, session=self._session)["data"]
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(base64.b64decode(image))
        # Events raised while the page ran (console, exceptions, log, requests) arrived before these answers.
        errors, requests = [], []
        for event in self._events:
            if event.get("sessionId") != self._session:
                continue
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append("console." + params["type"] + ": " + " ".join(
                    str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                errors.append("uncaught: " + str(details.get("exception", {}).get("description")
                                                 or details.get("text")))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
            elif method == "Page.javascriptDialogOpening":
                errors.append(f"dialog opened: {params.get('type')} {params.get('message')!r}")
            elif method == "Network.requestWillBeSent":
                requests.append(params.get("request", {}).get("url", ""))
        shown = [s["id"] for s in page["sections"] if s["visible"] and s["heading"]]
        return PageReport(
            url=url,
            title=page["title"],
            sections=tuple(shown),
            missing_sections=tuple(name for name in expected_sections if name not in shown),
            console_errors=tuple(errors),
            external_requests=tuple(u for u in requests if not u.startswith(("file:", "data:"))),
            broken_images=tuple(image["src"][:60] for image in page["images"] if not image["ok"]),
            scripts=int(page["scripts"]),
            links=tuple(page["links"]),
            text_length=int(page["textLength"]),
        )


def check_report(index: str | Path, *, screenshot_dir: str | Path | None = None, executable: str | None = None,
                 timeout: float = 60.0) -> dict[str, PageReport]:
    """Open a rendered report the way a reader would and check each kind of page.

    Opens ``index`` (the overview), follows its links to the first condition page and to the studies index, and
    from there to the first study. Returns the :class:`PageReport` per kind (``"overview"``, ``"condition"``,
    ``"studies"``, ``"study"``), each checked against :data:`radiospine.report.render.PAGE_SECTIONS`. A kind
    whose link is missing raises :class:`BrowserError`. ``screenshot_dir``: write ``<kind>.png`` there.
    """
    index = Path(index).resolve()
    if not index.is_file():
        raise FileNotFoundError(f"{index} does not exist; render the report first (radiospine report ...)")
    shots = None if screenshot_dir is None else Path(screenshot_dir)
    reports: dict[str, PageReport] = {}
    with Chromium(executable, timeout) as browser:
        def visit(kind: str, url: str) -> PageReport:
            reports[kind] = browser.open(url, PAGE_SECTIONS[kind], None if shots is None else shots / f"{kind}.png")
            return reports[kind]

        overview = visit("overview", index.as_uri())
        visit("condition", _first_link(overview, "/conditions/", "a condition page"))
        studies = visit("studies", _first_link(overview, "/studies/index.html", "the studies index"))
        visit("study", _first_link(studies, "/studies/", "a study page", exclude="/studies/index.html"))
    return reports


def _first_link(page: PageReport, contains: str, what: str, exclude: str | None = None) -> str:
    for link in page.links:
        target = link.split("#", 1)[0]
        if contains in target and (exclude is None or not target.endswith(exclude)):
            return target
    raise BrowserError(f"{page.url} links to no {what} (no link containing {contains!r})")

