"""The site: it builds offline with warnings as errors, and it *works* offline.

One build serves every test here (the ``site`` fixture; pytest-xdist's ``--dist loadfile`` keeps this file on one
worker). The build renders the committed notebook outputs and executes nothing. Then:

* every built page loads its scripts and stylesheets from the site itself — MathJax included — never from the web;
* a progress bar shows as one line, not one line per redraw;
* headless Chromium opens the site from a local server: on a chapter page the math is typeset by MathJax (its output
  elements are there and no raw ``\\(`` is left), a figure, a code cell and its output are shown; the search page
  finds "LoRA"; three screenshots are written to ``book/_build/screenshots/`` (or ``$MINIPEFT_SCREENSHOTS``).

Needs MathJax in ``.cache/book-static/`` and Debian's ``chromium``: ``bash tools/setup_book_assets.sh`` installs
both (``make setup`` runs it). Without Chromium the browser tests skip and say so; nothing else skips.
"""

from __future__ import annotations

import functools
import html
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MATHJAX = ROOT / ".cache" / "book-static" / "mathjax" / "tex-mml-chtml.js"
CHAPTER = "notebooks/03_lora.html"  # the page the browser test reads: math, figures, code cells and outputs
SCREENSHOT_PAGES = {"chapter_03_lora": CHAPTER, "intro": "book/intro.html", "search_LoRA": "search.html?q=LoRA"}
SETUP_HINT = "run `bash tools/setup_book_assets.sh` (`make setup` does)"

sys.path.insert(0, str(ROOT / "tools"))
import book_outputs  # noqa: E402  (tools/ is not a package: the build puts it on sys.path the same way)


# --- the build, once ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def book_build(tmp_path_factory):
    """Build the book into a temporary folder; return (the finished process, the html folder)."""
    assert MATHJAX.exists(), f"MathJax is missing ({MATHJAX.relative_to(ROOT)}): {SETUP_HINT}"
    out = tmp_path_factory.mktemp("book")
    builder = Path(sys.executable).parent / "jupyter-book"
    result = subprocess.run(
        [str(builder), "build", str(ROOT), "--config", str(ROOT / "book" / "_config.yml"),
         "--toc", str(ROOT / "book" / "_toc.yml"), "--path-output", str(out), "-W", "-n", "--keep-going"],
        capture_output=True, text=True, timeout=600,
    )
    return result, out / "_build" / "html"


@pytest.fixture(scope="session")
def site(book_build) -> Path:
    result, html_dir = book_build
    if result.returncode != 0:
        pytest.fail("the book did not build (see test_book_builds_offline_without_warnings):\n" + result.stdout[-2000:]
                    + result.stderr[-2000:])
    return html_dir


def pages(html_dir: Path) -> list[Path]:
    return sorted(path for path in html_dir.rglob("*.html") if "_static" not in path.parts)


@pytest.mark.slow
def test_book_builds_offline_without_warnings(book_build):
    result, html_dir = book_build
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for page in ("index", "book/intro", "book/notation", "book/glossary", "book/bibliography"):
        assert (html_dir / f"{page}.html").exists(), f"{page}.html was not built"
    for source in sorted((ROOT / "notebooks").glob("[0-9][0-9]*_*.ipynb")):
        page = html_dir / "notebooks" / f"{source.stem}.html"
        assert page.exists(), f"{page} was not built"


# --- nothing from the web -------------------------------------------------------------------------------------------
class _Resources(HTMLParser):
    """Collect what a page makes the browser fetch: script sources, loaded <link>s, images, frames, and URLs that
    inline scripts mention (a loader such as thebe's keeps its CDN address in an inline script)."""

    LOADING_RELS = {"stylesheet", "preload", "modulepreload", "prefetch", "icon", "shortcut", "manifest"}

    def __init__(self):
        super().__init__()
        self.fetched: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self._in_script = True
            if attrs.get("src"):
                self.fetched.append(attrs["src"])
        elif tag == "link" and attrs.get("href"):
            if self.LOADING_RELS & set((attrs.get("rel") or "").lower().split()):
                self.fetched.append(attrs["href"])
        elif tag in ("img", "iframe", "source", "embed") and attrs.get("src"):
            self.fetched.append(attrs["src"])

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.fetched.extend(re.findall(r"https?://[^\s\"'`)]+", data))


def is_remote(url: str) -> bool:
    return bool(re.match(r"^\s*(https?:)?//", url, flags=re.IGNORECASE))


@pytest.mark.slow
def test_every_page_loads_only_what_the_site_serves(site):
    remote = []
    for page in pages(site):
        parser = _Resources()
        parser.feed(page.read_text(encoding="utf-8"))
        remote += [f"{page.relative_to(site)}: {url}" for url in parser.fetched if is_remote(url)]
    for sheet in sorted((site / "_static").rglob("*.css")):
        text = sheet.read_text(encoding="utf-8", errors="replace")
        for url in re.findall(r"(?:@import\s+|url\()\s*['\"]?([^'\")\s]+)", text):
            if is_remote(url):
                remote.append(f"{sheet.relative_to(site)}: {url}")
    assert not remote, "pages load from the web (the site must work offline):\n" + "\n".join(remote[:40])


@pytest.mark.slow
def test_math_pages_load_the_local_mathjax(site):
    checked = 0
    for page in pages(site):
        text = page.read_text(encoding="utf-8")
        if 'class="math notranslate' not in text:
            continue
        checked += 1
        sources = [src for src in re.findall(r'<script[^>]*\ssrc="([^"]+)"', text) if "mathjax" in src.lower()]
        assert sources, f"{page.relative_to(site)} has math but loads no MathJax"
        for src in sources:
            served = (page.parent / src.split("?")[0]).resolve()
            assert served.is_file(), f"{page.relative_to(site)} loads MathJax from {src}, which the site lacks"
    assert checked >= 5, f"only {checked} pages with math: did the chapters lose their equations?"


# --- progress bars --------------------------------------------------------------------------------------------------
BAR = re.compile(r"^(?P<label>.*?)\s*\d+%\|.*?\|\s*(?P<done>\d+)/(?P<total>\d+)")


def test_carriage_returns_are_applied_like_a_terminal():
    assert book_outputs.apply_carriage_returns("\rtrain: 0%\rtrain: 50%\rtrain: 100%\nnext line\n") == \
        "train: 100%\nnext line\n"
    assert book_outputs.apply_carriage_returns("a\r\nb\n") == "a\nb\n", "CRLF is a line ending, not a redraw"
    assert book_outputs.apply_carriage_returns("done\r") == "done", "a trailing \\r erases nothing"
    outputs = [{"output_type": "stream", "name": "stderr", "text": "\rbar 0/2"},
               {"output_type": "stream", "name": "stdout", "text": "printed\n"},
               {"output_type": "stream", "name": "stderr", "text": "\rbar 2/2\n"},
               {"output_type": "display_data", "data": {}}]
    merged = book_outputs.merge_streams(outputs)
    assert [(o["output_type"], o.get("name")) for o in merged] == \
        [("stream", "stderr"), ("stream", "stdout"), ("display_data", None)]
    assert merged[0]["text"] == "bar 2/2\n" and merged[1]["text"] == "printed\n"


@pytest.mark.slow
def test_progress_bars_are_one_line_on_the_site(site):
    """A redraw sequence (the same bar at 0/80, 1/80, 2/80, ... on consecutive lines) must not reach a page."""
    stacked = []
    for page in pages(site):
        for block in re.findall(r"<pre[^>]*>(.*?)</pre>", page.read_text(encoding="utf-8"), flags=re.S):
            previous = None
            for line in html.unescape(re.sub(r"<[^>]+>", "", block)).splitlines():
                match = BAR.match(line.strip())
                if not match:
                    previous = None
                    continue
                bar = (match["label"], int(match["total"]), int(match["done"]))
                if previous and previous[:2] == bar[:2] and bar[2] > previous[2]:
                    stacked.append(f"{page.relative_to(site)}: {line.strip()[:80]}")
                previous = bar
    assert not stacked, "progress bars render as one line per redraw:\n" + "\n".join(stacked[:10])


# --- in a real browser ----------------------------------------------------------------------------------------------
def find_chromium() -> str | None:
    for name in (os.environ.get("MINIPEFT_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="session")
def browser():
    path = find_chromium()
    if path is None:
        pytest.skip(f"Chromium not found (looked for chromium, chromium-browser, google-chrome, $MINIPEFT_CHROMIUM): "
                    f"{SETUP_HINT} to install Debian's chromium")
    return path


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="session")
def server(site):
    """Serve the built site on 127.0.0.1 (a free port) from a thread, as `python -m http.server` would."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def run_chromium(browser: str, *args: str) -> subprocess.CompletedProcess:
    """One headless Chromium run with a fresh profile, nothing that phones home and no network but 127.0.0.1. The
    virtual-time budget lets the page's scripts (MathJax, the search) finish before the DOM is dumped or the
    screenshot taken."""
    with tempfile.TemporaryDirectory(prefix="minipeft-chromium-") as profile:
        return subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=10000",
             # Every host but the local server fails to resolve: the page gets no network even where there is one.
             "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", *args],
            capture_output=True, text=True, timeout=180,
        )


def rendered_dom(browser: str, url: str) -> str:
    result = run_chromium(browser, "--dump-dom", url)
    assert result.returncode == 0 and "<html" in result.stdout, f"chromium could not load {url}:\n{result.stderr[-2000:]}"
    return result.stdout


class _VisibleText(HTMLParser):
    """The page's prose as a reader sees it: no scripts, styles, code blocks or MathJax's own elements."""

    SKIP = {"script", "style", "pre", "code", "mjx-container", "textarea"}

    def __init__(self):
        super().__init__()
        self.depth = 0
        self.parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.depth += 1

    def handle_endtag(self, tag):
        if tag in self.SKIP and self.depth:
            self.depth -= 1

    def handle_data(self, data):
        if not self.depth:
            self.parts.append(data)


@pytest.fixture(scope="session")
def chapter_dom(browser, server):
    return rendered_dom(browser, f"{server}/{CHAPTER}")


@pytest.mark.slow
def test_chapter_math_is_typeset_in_the_browser(chapter_dom, site):
    formulas = (site / CHAPTER).read_text(encoding="utf-8").count('class="math notranslate')
    assert formulas > 0, f"{CHAPTER} has no math to check"
    typeset = chapter_dom.count("<mjx-container")
    assert typeset >= formulas, f"MathJax typeset {typeset} of {formulas} formulas on {CHAPTER}"
    assert "<mjx-merror" not in chapter_dom, f"MathJax could not parse a formula on {CHAPTER} (look for mjx-merror)"
    reader = _VisibleText()
    reader.feed(chapter_dom)
    prose = "".join(reader.parts)
    raw = [prose[max(0, m.start() - 40):m.end() + 40] for m in re.finditer(r"\\\(|\\\[|\$\$", prose)]
    assert not raw, "raw TeX left in the rendered page (MathJax did not run?):\n" + "\n".join(raw[:5])


@pytest.mark.slow
def test_chapter_shows_a_figure_a_code_cell_and_its_output(chapter_dom, site):
    images = re.findall(r'<img[^>]*\ssrc="([^"]+)"', chapter_dom)
    figures = [src for src in images if (site / "notebooks" / src.split("?")[0]).resolve().is_file()]
    assert figures, f"no figure on {CHAPTER} whose file the site serves (img sources: {images[:5]})"
    assert re.search(r'class="[^"]*\bcell_input\b.*?<pre', chapter_dom, flags=re.S), "no code cell on the page"
    # Each output block starts at a "cell_output" class; its text (tags dropped) must not be empty.
    starts = [m.end() for m in re.finditer(r'class="[^"]*\bcell_output\b', chapter_dom)]
    shown = [re.sub(r"<[^>]+>", "", chapter_dom[start:start + 2000]).strip() for start in starts]
    assert any(shown), f"no code cell output with content on {CHAPTER}"


@pytest.mark.slow
def test_search_finds_lora_in_the_browser(browser, server):
    dom = rendered_dom(browser, f"{server}/search.html?q=LoRA")
    results = re.search(r'<ul class="search">(.*?)</ul>', dom, flags=re.S)
    assert results, "the search page showed no result list for 'LoRA'"
    assert 'href="notebooks/03_lora.html' in results.group(1), "searching 'LoRA' does not find the LoRA chapter"


@pytest.mark.slow
def test_screenshots_of_three_pages(browser, server, record_property, capsys):
    folder = Path(os.environ.get("MINIPEFT_SCREENSHOTS", ROOT / "book" / "_build" / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    for name, page in SCREENSHOT_PAGES.items():
        target = folder / f"{name}.png"
        target.unlink(missing_ok=True)
        result = run_chromium(browser, "--hide-scrollbars", "--window-size=1280,2000", f"--screenshot={target}",
                              f"{server}/{page}")
        assert result.returncode == 0 and target.is_file(), f"no screenshot of {page}:\n{result.stderr[-2000:]}"
        header = target.read_bytes()[:24]
        assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{target} is not a PNG"
        width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
        assert (width, height) == (1280, 2000), f"{target} is {width}x{height}, asked for 1280x2000"
        assert target.stat().st_size > 20_000, f"{target} is nearly empty: did the page render?"
    record_property("screenshots", str(folder))
    with capsys.disabled():
        print(f"\nscreenshots of {', '.join(SCREENSHOT_PAGES.values())} written to {folder}")


def test_readme_chapter_table_is_generated_from_results():
    from minipeft.book.paths import book_root
    from minipeft.book.results import chapter_table, readme_with_table

    text = (book_root() / "README.md").read_text()
    assert readme_with_table(text, chapter_table()) == text, \
        "README's chapter table is stale: run `python -m minipeft.book.results --write-readme`"
