"""The built site in a real browser: headless Debian Chromium driven by selenium, against the smoke build.

Each page (index, setup, every chapter) is loaded once; one script collects its facts (console
errors, math, images, cell outputs, code widths) and the checks below read that cache, one test per
page and check, each failure naming the page, the check and the offending element or text.

Skipped when selenium, /usr/bin/chromium or /usr/bin/chromedriver is missing, unless
LLMBOOK_REQUIRE_BROWSER=1 (set by `make test`), where a missing one is a failure.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import REPO
from llmbook.book import runner

pytestmark = pytest.mark.xdist_group("book")  # same worker as tests/test_book.py: one smoke build per run

CHROMIUM = "/usr/bin/chromium"  # Debian's chromium; never a downloaded browser
CHROMEDRIVER = "/usr/bin/chromedriver"  # Debian's chromium-driver, the same version as the browser
CHROMIUM_FLAGS = (  # /work/shared/STACK.md section G
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
# The width check measures the text column at this window size. From 1440 px up the theme's column is
# at its widest (786 px of 14 px monospace: 93 characters); at 1280 px it is 672 px (79 characters).
WINDOW_SIZE = (1440, 900)
PAGE_LOAD_TIMEOUT_S = 30
SCRIPT_TIMEOUT_S = 30  # the facts script waits for MathJax and images within this
MATHJAX_WAIT_MS = 15_000  # how long a page with math may take to define MathJax.startup.promise
IMAGE_WAIT_MS = 10_000
SEARCH_TIMEOUT_S = 15
HTTP_REQUEST_TIMEOUT_S = 10  # the test server drops a connection idle for longer

MAX_OUTPUT_LINES = 40  # a longer output block is a log dump, not something a reader reads
# A chapter is prose, results and the lesson's code; bookkeeping folds away (hide-input). Open code
# took 31-40 % of each chapter's height before it did.
MAX_CODE_SHARE = 0.25
WARNING_MARKERS = ("Warning", "WARNING", "warnings.warn", "TqdmWarning")
MACHINE_PATH_MARKERS = ("/work/", "/home/", "/tmp/", "/root/", "site-packages", ".venv")
WIDTH_SLACK_PX = 2  # sub-pixel rounding
SNIPPET_CHARS = 200  # offending text is quoted up to this length
MAX_LISTED = 25  # problems listed per failure; the rest are counted

# SEVERE browser-log entries known to be harmless: (substring of the message, why it is harmless).
# Empty: every SEVERE entry fails its page. Add an entry only with the reason next to it.
IGNORED_CONSOLE_ERRORS: tuple[tuple[str, str], ...] = ()

CHAPTERS = runner.discover(runner.BookPaths.at(REPO))
# page id -> path under the site root; index.html is Jupyter Book's redirect to the root page.
PAGES = {
    "index": "index.html",
    "book/setup": "book/setup.html",
    **{f"book/chapters/{c.stem}": f"book/chapters/{c.stem}.html" for c in CHAPTERS},
}

_FACTS: dict[str, dict] = {}  # page id -> what the facts script found (each page is loaded once)
_SEARCHES: dict[str, dict] = {}  # search term -> result pages and the search page's console errors
_LATE_CONSOLE: list[str] = []  # SEVERE entries logged after their page's facts were taken


def _unavailable(reason: str) -> None:
    if os.environ.get("LLMBOOK_REQUIRE_BROWSER") == "1":
        pytest.fail(
            f"{reason}, but LLMBOOK_REQUIRE_BROWSER=1: run `make setup` "
            "(installs selenium with the dev extra, and Debian's chromium and chromium-driver)"
        )
    pytest.skip(reason)


def _snip(text: str, limit: int = SNIPPET_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _report(page: str, check: str, problems: list[str]) -> str:
    listed = [f"  - {p}" for p in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        listed.append(f"  … and {len(problems) - MAX_LISTED} more")
    return f"{page}: {check}: {len(problems)} problem(s)\n" + "\n".join(listed)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """One headless Chromium for the module, with its own fresh profile; quit in teardown."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed (pip install -e '.[dev]')")
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            _unavailable(f"{path} is missing (apt-get install {package})")

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={WINDOW_SIZE[0]},{WINDOW_SIZE[1]}")
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT_S)
        driver.set_script_timeout(SCRIPT_TIMEOUT_S)
        yield driver
    finally:
        driver.quit()  # stops chromedriver and every chromium process it started


class _SiteHandler(SimpleHTTPRequestHandler):
    timeout = HTTP_REQUEST_TIMEOUT_S

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's signature
        pass  # a failed request shows up as a console error of the page that made it


@pytest.fixture(scope="module")
def site_url(built_site: Path) -> Iterator[str]:
    """The built site served on 127.0.0.1 (a free port) from a thread; shut down in teardown."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_SiteHandler, directory=str(built_site)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="site-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _console(driver) -> list[dict]:
    return driver.get_log("browser")  # entries since the last call; reading them clears them


def _errors(entries: list[dict]) -> list[str]:
    errors = []
    for entry in entries:
        if entry.get("level") != "SEVERE":
            continue
        message = entry.get("message", "")
        if any(known in message for known, _why in IGNORED_CONSOLE_ERRORS):
            continue
        errors.append(_snip(message))
    return errors


def _navigate(driver, url: str) -> None:
    """Open `url`; entries still in the log belong to the page before, and count as late errors."""
    _LATE_CONSOLE.extend(f"{driver.current_url}: {e}" for e in _errors(_console(driver)))
    driver.get(url)


# Runs in the page (execute_async_script): waits for MathJax's startup promise (it resolves after the
# first typesetting) and for every image, then describes math, images, cell outputs and code blocks.
FACTS_SCRIPT = r"""
const [mathWaitMs, imageWaitMs, slack, done] = arguments;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const text = (el) => (el ? el.textContent || "" : "");
const cells = Array.from(document.querySelectorAll("div.cell"));
const firstLine = (el) => text(el).split("\n").map((l) => l.trim()).find((l) => l) || "";
const where = (el) => {
  const cell = el.closest("div.cell");
  if (cell) {
    const part = el.closest("div.cell_output") ? "output" : "input";
    const code = firstLine(cell.querySelector("div.cell_input pre"));
    return `cell ${cells.indexOf(cell) + 1} ${part} (code: ${code.slice(0, 60)})`;
  }
  const section = el.closest("section[id]");
  return section ? `block in section #${section.id}` : "block outside any section";
};
(async () => {
  const facts = { url: location.href, title: text(document.querySelector("article h1, h1")).replace("#", "").trim() };

  const maths = Array.from(document.querySelectorAll(".math"));
  facts.math_count = maths.length;
  facts.mathjax = "no math on the page";
  if (maths.length) {
    const ready = () => window.MathJax && MathJax.startup && MathJax.startup.promise;
    const t0 = Date.now();
    while (!ready() && Date.now() - t0 < mathWaitMs) await sleep(50);
    if (ready()) {
      try { await MathJax.startup.promise; facts.mathjax = "ready"; }
      catch (e) { facts.mathjax = "MathJax startup failed: " + e; }
    } else {
      facts.mathjax = `MathJax never started (no MathJax.startup.promise after ${mathWaitMs} ms)`;
    }
  }
  facts.untypeset = maths.filter((m) => !m.querySelector("mjx-container")).map((m) => text(m));
  facts.math_errors = maths.flatMap((m) => Array.from(m.querySelectorAll("mjx-merror")).map(
    (e) => `${text(m).slice(0, 80)} -> ${e.getAttribute("data-mjx-error") || text(e)}`));

  const images = Array.from(document.images);
  images.forEach((img) => { if (img.loading === "lazy") img.loading = "eager"; });
  await Promise.race([
    Promise.all(images.map((img) => img.complete ? null : new Promise((r) => {
      img.addEventListener("load", r); img.addEventListener("error", r);
    }))),
    sleep(imageWaitMs),
  ]);
  facts.image_count = images.length;
  facts.broken_images = images.filter((img) => !(img.complete && img.naturalWidth > 0))
    .map((img) => `${img.getAttribute("src")} (alt ${JSON.stringify(img.alt || "")}, `
      + `complete=${img.complete}, naturalWidth=${img.naturalWidth})`);

  facts.outputs = Array.from(document.querySelectorAll("div.cell_output")).map((out) => ({
    where: where(out),
    text: out.innerText || text(out),
    pres: Array.from(out.querySelectorAll("pre")).map((pre) => ({
      lines: text(pre).replace(/\n+$/, "").split("\n").length,
      first: firstLine(pre),
    })),
  }));

  const article = document.querySelector("article.bd-article") || document.body;
  const height = (el) => el.getBoundingClientRect().height;
  // Folded code sits in a closed <details>: not drawn, though the browser still lays it out (and
  // reports a height for it) when asked. Only code a reader sees counts.
  facts.code_share = Array.from(article.querySelectorAll("div.cell_input"))
    .filter((el) => !el.closest("details:not([open])"))
    .reduce((sum, el) => sum + height(el), 0) / Math.max(1, height(article));
  facts.pre_count = article.querySelectorAll("pre").length;
  facts.wide = Array.from(article.querySelectorAll("pre"))
    .filter((pre) => pre.scrollWidth > pre.clientWidth + slack)
    .map((pre) => {
      // Measure with a probe in the same font: the column in characters, and the widest line in pixels.
      const lines = text(pre).split("\n");
      const style = getComputedStyle(pre);
      const room = pre.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
      const probe = pre.appendChild(document.createElement("span"));
      const width = (s) => { probe.textContent = s; return probe.getBoundingClientRect().width; };
      const fits = Math.floor((100 * room) / width("x".repeat(100)));
      const [widest, px] = lines.map((l) => [l, width(l)]).reduce((a, b) => (b[1] > a[1] ? b : a));
      probe.remove();
      return `${where(pre)}: scrollWidth ${pre.scrollWidth}px > clientWidth ${pre.clientWidth}px `
        + `(fits ${fits} chars); widest line (${widest.length} chars, ${Math.round(px)}px): ${widest}`;
    });
  done(facts);
})().catch((e) => done({ script_error: String(e && e.stack || e) }));
"""


def _facts(driver, site_url: str, page: str) -> dict:
    if page not in _FACTS:
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.support.ui import WebDriverWait

        url = site_url + PAGES[page]
        _navigate(driver, url)
        # index.html is a <meta http-equiv="Refresh"> redirect: wait until the page it names has loaded.
        # While the redirect navigates, a script can fail with "document unloaded": retry until the timeout.
        WebDriverWait(driver, PAGE_LOAD_TIMEOUT_S, ignored_exceptions=(WebDriverException,)).until(
            lambda d: d.execute_script(
                "return document.readyState === 'complete' && !document.querySelector('meta[http-equiv=Refresh i]')"
            ),
            message=f"{page}: {url} did not finish loading (or its redirect) in {PAGE_LOAD_TIMEOUT_S} s",
        )
        facts = driver.execute_async_script(FACTS_SCRIPT, MATHJAX_WAIT_MS, IMAGE_WAIT_MS, WIDTH_SLACK_PX)
        assert "script_error" not in facts, f"{page}: the facts script failed in the page: {facts.get('script_error')}"
        facts["console_errors"] = _errors(_console(driver))
        _FACTS[page] = facts
    return _FACTS[page]


@pytest.fixture(params=list(PAGES))
def page(request: pytest.FixtureRequest, browser, site_url: str) -> tuple[str, dict]:
    return request.param, _facts(browser, site_url, request.param)


def test_page_has_no_console_errors(page: tuple[str, dict]) -> None:
    name, facts = page
    errors = facts["console_errors"]
    assert not errors, _report(name, "console errors (SEVERE browser-log entries)", errors)


def test_page_math_is_typeset(page: tuple[str, dict]) -> None:
    name, facts = page
    problems = []
    if facts["math_count"] and facts["mathjax"] != "ready":
        problems.append(facts["mathjax"])
    problems += [f".math element without mjx-container: {_snip(t)}" for t in facts["untypeset"]]
    problems += [f"MathJax error: {_snip(t)}" for t in facts["math_errors"]]
    assert not problems, _report(name, f"math typesetting ({facts['math_count']} .math elements)", problems)


def test_page_images_load(page: tuple[str, dict]) -> None:
    name, facts = page
    broken = [_snip(b) for b in facts["broken_images"]]
    assert not broken, _report(name, f"images loaded ({facts['image_count']} <img>)", broken)


def test_page_outputs_are_short(page: tuple[str, dict]) -> None:
    name, facts = page
    problems = [
        f"{out['where']}: {pre['lines']} lines > {MAX_OUTPUT_LINES}; starts: {_snip(pre['first'], 120)}"
        for out in facts["outputs"]
        for pre in out["pres"]
        if pre["lines"] > MAX_OUTPUT_LINES
    ]
    assert not problems, _report(name, f"cell output blocks at most {MAX_OUTPUT_LINES} lines", problems)


def _marked_lines(outputs: list[dict], markers: tuple[str, ...]) -> list[str]:
    problems = []
    for out in outputs:
        for line in out["text"].splitlines():
            found = [m for m in markers if m in line]
            if found:
                problems.append(f"{out['where']}: {found[0]!r} in: {_snip(line)}")
    return problems


def test_page_outputs_have_no_warnings(page: tuple[str, dict]) -> None:
    name, facts = page
    problems = _marked_lines(facts["outputs"], WARNING_MARKERS)
    assert not problems, _report(name, f"warning text in cell outputs ({', '.join(WARNING_MARKERS)})", problems)


def test_page_outputs_have_no_machine_paths(page: tuple[str, dict]) -> None:
    name, facts = page
    problems = _marked_lines(facts["outputs"], MACHINE_PATH_MARKERS)
    assert not problems, _report(name, f"machine paths in cell outputs ({', '.join(MACHINE_PATH_MARKERS)})", problems)


def test_page_code_fits_the_column(page: tuple[str, dict]) -> None:
    name, facts = page
    wide = [_snip(w) for w in facts["wide"]]
    assert not wide, _report(name, f"code blocks wider than the column ({facts['pre_count']} <pre>)", wide)


def test_page_code_share(page: tuple[str, dict]) -> None:
    name, facts = page
    assert facts["code_share"] <= MAX_CODE_SHARE, (
        f"{name}: open code cells take {facts['code_share']:.0%} of the page's height (at most "
        f"{MAX_CODE_SHARE:.0%}): fold code that is not the lesson (tag hide-input)"
    )


def _search_term(title: str) -> str:
    """The first word of four or more Latin letters in a chapter's title: 'Tokenization (分词)' -> 'Tokenization'."""
    words = re.findall(r"[A-Za-z]{4,}", title)
    assert words, f"no searchable word in the chapter title {title!r}"
    return words[0]


@pytest.mark.parametrize("chapter", [c.stem for c in CHAPTERS])
def test_search_finds_chapter(chapter: str, browser, site_url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    page = f"book/chapters/{chapter}"
    term = _search_term(_facts(browser, site_url, page)["title"])
    if term not in _SEARCHES:
        _navigate(browser, f"{site_url}search.html?q={term}")
        # Sphinx writes the summary ("Search finished, found N page(s)…" or "did not match") when done.
        WebDriverWait(browser, SEARCH_TIMEOUT_S).until(
            lambda d: d.execute_script(
                "const s = document.querySelector('#search-results p.search-summary'); return s && s.innerText.trim()"
            ),
            message=f"search for {term!r}: no result summary after {SEARCH_TIMEOUT_S} s (search index not loaded?)",
        )
        results = browser.execute_script(
            "return Array.from(document.querySelectorAll('ul.search li > a:first-of-type'))"
            ".map((a) => new URL(a.href).pathname.replace(/^\\//, ''))"
        )
        summary = browser.execute_script("return document.querySelector('#search-results p.search-summary').innerText")
        _SEARCHES[term] = {"results": results, "summary": summary, "console_errors": _errors(_console(browser))}
    found = _SEARCHES[term]
    assert PAGES[page] in found["results"], (
        f"search for {term!r} (from the title of {page}): {PAGES[page]} not among the results "
        f"{found['results']}; summary: {_snip(found['summary'])}"
    )
    assert not found["console_errors"], _report(f"search.html?q={term}", "console errors", found["console_errors"])


def test_no_late_console_errors(browser) -> None:
    """SEVERE entries logged after a page's facts were taken (read when the next page opened, or now)."""
    _LATE_CONSOLE.extend(f"{browser.current_url}: {e}" for e in _errors(_console(browser)))
    assert not _LATE_CONSOLE, _report("site", "console errors logged after their page was checked", _LATE_CONSOLE)
