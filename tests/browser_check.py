"""Open report pages in headless Chromium (driven by Playwright) and check what a reader would see.

Per page: the expected ``<section id=...>`` elements exist, are visible and have a heading; no console errors
(``console.error``/``console.assert``, uncaught exceptions, failed loads); no request leaves the folder (every
request is a ``file:`` or ``data:`` URL; others are recorded and aborted, so the check never reaches the network);
every image decodes; the page holds no ``<script>`` element (the report has none of its own, so one would be an
injected string) and opens no dialog (``alert``). Optionally a screenshot of the viewport.

The browser is Debian's ``chromium`` package (Playwright's own browser download is not used): Playwright launches
the executable :func:`find_chromium` finds, with a temporary profile, and closes it on exit.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from playwright.sync_api import Dialog, Request, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from radiospine.report.render import PAGE_SECTIONS

if TYPE_CHECKING:
    from typing import Self

#: Executables tried, in order, when none is given.
CHROMIUM_NAMES: tuple[str, ...] = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_ARGS: tuple[str, ...] = (
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-dev-shm-usage",
)
WINDOW_SIZE = (1280, 2000)
_LOCAL_URL = re.compile(r"^(file|data):")
_PAGE_STATE_SCRIPT = """() => {
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
}"""


class BrowserError(RuntimeError):
    """No Chromium to start, or a report page that does not link where it should."""


@dataclass(frozen=True)
class PageReport:
    """What the browser saw on one page.

    Attributes:
        url: the page's ``file://`` URL.
        title: the document title.
        sections: ids of the sections that are visible and have a heading.
        missing_sections: expected section ids that are absent, hidden or without a heading.
        console_errors: console errors, uncaught exceptions, failed loads, dialogs opened.
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
    """A headless Chromium page driven by Playwright; use as a context manager.

    ``executable``: the browser (None: :func:`find_chromium`); ``timeout``: seconds for the launch and for any one
    page action; ``window``: the viewport's (width, height) in CSS pixels, which is also the screenshot's size.
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
        self._playwright = sync_playwright().start()
        try:
            self._browser = self._playwright.chromium.launch(
                executable_path=executable, args=list(CHROMIUM_ARGS), timeout=self.timeout * 1000)
            width, height = self.window
            self._page = self._browser.new_page(viewport={"width": width, "height": height})
        except BaseException:
            self._playwright.stop()
            raise
        self._page.set_default_timeout(self.timeout * 1000)
        self._errors: list[str] = []
        self._external: list[str] = []
        self._page.on("console", lambda message: self._errors.append(f"console.{message.type}: {message.text}")
                      if message.type in ("error", "assert") else None)
        self._page.on("pageerror", lambda error: self._errors.append(f"uncaught: {error.name}: {error.message}"))
        self._page.on("requestfailed", self._request_failed)
        self._page.on("dialog", self._dialog)
        self._page.route(lambda url: not _LOCAL_URL.match(url), self._block)
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._browser.close()
        finally:
            self._playwright.stop()

    def _block(self, route, request: Request) -> None:
        self._external.append(request.url)
        route.abort()

    def _request_failed(self, request: Request) -> None:
        if _LOCAL_URL.match(request.url):  # external requests are aborted on purpose and reported as such
            self._errors.append(f"failed load: {request.url} ({request.failure})")

    def _dialog(self, dialog: Dialog) -> None:
        """A dialog (``alert``) blocks the page: record it and dismiss it."""
        self._errors.append(f"dialog opened: {dialog.type} {dialog.message!r}")
        dialog.dismiss()

    def open(self, url: str, expected_sections: Sequence[str] = (), screenshot: Path | None = None) -> PageReport:
        """Load ``url``, wait for its load event, and report what the page shows (see :class:`PageReport`).
        ``screenshot``: write a PNG of the viewport (the top of the page) there."""
        self._errors.clear()
        self._external.clear()
        try:
            self._page.goto(url, wait_until="load")
        except PlaywrightError as exc:
            raise BrowserError(f"could not open {url}: {exc.message}") from None
        page = self._page.evaluate(_PAGE_STATE_SCRIPT)
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            self._page.screenshot(path=screenshot)
        shown = [s["id"] for s in page["sections"] if s["visible"] and s["heading"]]
        return PageReport(
            url=url,
            title=page["title"],
            sections=tuple(shown),
            missing_sections=tuple(name for name in expected_sections if name not in shown),
            console_errors=tuple(self._errors),
            external_requests=tuple(self._external),
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
