"""Build the docs site and look at every page in a real headless browser.

    python scripts/check_site.py [--screenshots DIR] [--site-dir DIR] [--no-build]

Builds with ``mkdocs build --strict`` (into ``site/`` unless ``--site-dir``), serves the site on
127.0.0.1 (a free port, stopped afterwards) and opens every page in the system chromium (the
Debian package; playwright only drives it, no browser is downloaded) at a 1280 px and a 390 px
(phone) wide viewport. A page fails on:

* a JavaScript error or a console error;
* a request that fails or answers 4xx/5xx (a missing asset);
* no ``h1``;
* a raw Sphinx role (``:class:`X```, ...) or a ``:::`` (an unprocessed mkdocstrings block) left
  in its text;
* content wider than the viewport (the page scrolls sideways).

With ``--screenshots DIR`` it saves full-page PNGs of a few key pages (home, quickstart, a
reference page) at both widths. Exit status 0 when every page passes, 1 otherwise, 2 when no
browser (or no playwright) is found.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VIEWPORTS = {"desktop": (1280, 900), "phone": (390, 844)}
# Pages screenshotted with --screenshots (site-relative URL -> file stem).
KEY_PAGES = {
    "": "index",
    "quickstart/": "quickstart",
    "reference/resolver/": "reference-resolver",
    "reference/tenantlora/": "reference-tenantlora",
}
RAW_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const|type|any):`")
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# What a page view is judged on, gathered in the page: whether it has an h1, its text (the
# article, else the body), and when it scrolls sideways the visible elements sticking out to the
# right of the viewport, outermost first.
PAGE_FACTS_JS = """
() => {
  const width = document.documentElement.clientWidth;
  const scroll = document.documentElement.scrollWidth;
  const article = document.querySelector("article");
  const facts = {
    h1: document.querySelector("h1") !== null,
    text: (article || document.body).innerText,
    overflow: null,
  };
  if (scroll <= width + 1) return facts;
  const clipped = (el) => {
    for (let p = el.parentElement; p; p = p.parentElement) {
      const style = getComputedStyle(p);
      if (style.overflowX !== "visible" || style.position === "fixed") return true;
    }
    return false;
  };
  const culprits = [];
  for (const el of document.body.querySelectorAll("*")) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.right <= width + 1 || clipped(el)) continue;
    if (culprits.some((c) => c.el.contains(el))) continue;
    culprits.push({el, right: Math.round(r.right)});
    if (culprits.length >= 5) break;
  }
  const name = (el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") +
    (typeof el.className === "string" && el.className.trim()
      ? "." + el.className.trim().split(/\\s+/).join(".") : "");
  facts.overflow = {
    width, scroll, culprits: culprits.map((c) => `${name(c.el)} (right edge ${c.right}px)`),
  };
  return facts;
}
"""


@dataclass
class PageResult:
    url: str
    problems: list[str] = field(default_factory=list)


def find_browser() -> str | None:
    """The system chromium: $CHROMIUM, else the first of BROWSERS on PATH."""
    if env := os.environ.get("CHROMIUM"):
        return env
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    return None


def build(site_dir: Path, config: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet"]
    cmd += ["-f", str(config), "-d", str(site_dir)]
    subprocess.run(cmd, cwd=ROOT, check=True, env=env)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # The browser dropping a connection (leaving a page mid-download) is not an error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


@contextlib.contextmanager
def serve(site_dir: Path) -> Iterator[str]:
    """Serve ``site_dir`` on 127.0.0.1 (a free port) while the block runs; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(site_dir))
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def pages(site_dir: Path) -> list[str]:
    """Every page of the site, as a site-relative URL ("" is the home page)."""
    urls = []
    for path in sorted(site_dir.rglob("index.html")):
        rel = path.parent.relative_to(site_dir).as_posix()
        urls.append("" if rel == "." else rel + "/")
    return urls


def _external(url: str, base: str) -> bool:
    return not url.startswith(base) and not url.startswith(("data:", "blob:", "about:"))


class Checker:
    """Opens pages in one browser, a few at a time, and collects what is wrong with each."""

    def __init__(self, browser, base: str, site_dir: Path, screenshots: Path | None) -> None:  # type: ignore[no-untyped-def]
        self.browser = browser
        self.base = base
        self.screenshots = screenshots
        self.external: set[str] = set()
        # Every page loads the same search index and builds it in a worker: the real one is
        # loaded (and searched) on the home page; other pages get an empty one, which halves
        # the time a check takes.
        index = json.loads((site_dir / "search" / "search_index.json").read_text())
        self.empty_index = json.dumps({"config": index.get("config", {}), "docs": []})

    async def route(self, route) -> None:  # type: ignore[no-untyped-def]
        url = route.request.url
        if _external(url, self.base):
            # Checked offline: a request to another host (the theme's GitHub repository
            # facts) is counted and blocked, never waited for.
            self.external.add(url.split("/")[2])
            await route.abort()
        elif url.endswith("/search/search_index.json") and not self.real_index(route):
            await route.fulfill(status=200, content_type="application/json", body=self.empty_index)
        else:
            await route.fallback()

    def real_index(self, route) -> bool:  # type: ignore[no-untyped-def]
        """Whether the home page asks (it gets the real index)."""
        try:
            page_url = route.request.frame.url
        except Exception:  # a request from a worker has no frame
            page_url = route.request.headers.get("referer", "")
        return page_url == self.base

    async def view(self, page, url: str, viewport: str) -> list[str]:  # type: ignore[no-untyped-def]
        """The problems of one page view (an empty list when it passes)."""
        problems: list[str] = []
        base = self.base

        def console(message) -> None:  # type: ignore[no-untyped-def]
            # A blocked external request is not the page's fault.
            if message.type == "error" and not _external(message.location.get("url", base), base):
                problems.append(f"console error: {message.text}")

        def failed(request) -> None:  # type: ignore[no-untyped-def]
            # ERR_ABORTED: cancelled, by the page or by leaving it (a 404 shows as a response).
            if not _external(request.url, base) and "ERR_ABORTED" not in (request.failure or ""):
                problems.append(f"request failed: {request.url} ({request.failure})")

        def response(response) -> None:  # type: ignore[no-untyped-def]
            if response.status >= 400:
                problems.append(f"HTTP {response.status}: {response.url}")

        listeners = {
            "console": console,
            "pageerror": lambda error: problems.append(f"JavaScript error: {error}"),
            "requestfailed": failed,
            "response": response,
        }
        for event, listener in listeners.items():
            page.on(event, listener)
        try:
            answer = await page.goto(base + url, wait_until="load")
            if answer is None or answer.status != 200:
                problems.append(f"page answered {answer.status if answer else 'nothing'}")
                return problems
            problems += await self.inspect(page, viewport)
            if url == "" and viewport == "desktop":
                problems += await self.search(page)
            if self.screenshots is not None and url in KEY_PAGES:
                self.screenshots.mkdir(parents=True, exist_ok=True)
                target = self.screenshots / f"{KEY_PAGES[url]}-{viewport}.png"
                await page.screenshot(path=str(target), full_page=True)
        finally:
            for event, listener in listeners.items():
                page.remove_listener(event, listener)
        return problems

    async def inspect(self, page, viewport: str) -> list[str]:  # type: ignore[no-untyped-def]
        facts = await page.evaluate(PAGE_FACTS_JS)  # one round trip: there are many views
        problems = []
        if not facts["h1"]:
            problems.append("no h1")
        text = facts["text"]
        for match in list(RAW_ROLE.finditer(text))[:5]:
            context = text[max(0, match.start() - 30) : match.end() + 30].replace("\n", " ")
            problems.append(f"raw Sphinx role: ...{context}...")
        if ":::" in text:
            index = text.index(":::")
            problems.append(f"':::' left in the text: {text[index : index + 60]!r}")
        if overflow := facts["overflow"]:
            problems.append(
                f"content {overflow['scroll']}px wide in a {overflow['width']}px {viewport} "
                "viewport: " + "; ".join(overflow["culprits"] or ["(no single element found)"])
            )
        return problems

    async def search(self, page) -> list[str]:  # type: ignore[no-untyped-def]
        """Type a query in the search box: the index loads and finds pages."""
        box = page.locator("input.md-search__input")
        results = page.locator(".md-search-result__item")
        try:
            await box.click(timeout=5_000)
            # A query typed before the index is built is dropped: type again until it answers.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                await box.fill("")
                await box.press_sequentially("resolver")
                with contextlib.suppress(Exception):
                    await results.first.wait_for(timeout=1_000)
                    break
            else:
                return ["search found nothing for 'resolver' in 20 s"]
            await box.fill("")
            await page.keyboard.press("Escape")
        except Exception as error:  # playwright's TimeoutError and friends
            return [f"search box: {str(error).splitlines()[0]}"]
        return []

    async def run(self, urls: list[str], workers: int) -> list[PageResult]:
        queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        # The home page first in each viewport: it loads the real search index.
        for viewport in VIEWPORTS:
            for url in sorted(urls, key=bool):
                queue.put_nowait((viewport, url))
        contexts = {}
        for viewport, (width, height) in VIEWPORTS.items():
            contexts[viewport] = await self.browser.new_context(
                viewport={"width": width, "height": height}
            )
            # Only what is rewritten goes through Python: every asset would pay a round trip.
            await contexts[viewport].route(
                re.compile("^(?!" + re.escape(self.base) + ")"), self.route
            )
            await contexts[viewport].route("**/search/search_index.json", self.route)
        results: list[PageResult] = []

        async def worker() -> None:
            pages = {}
            while not queue.empty():
                viewport, url = queue.get_nowait()
                if viewport not in pages:
                    pages[viewport] = await contexts[viewport].new_page()
                result = PageResult(f"/{url} [{viewport}]")
                result.problems = await self.view(pages[viewport], url, viewport)
                results.append(result)

        await asyncio.gather(*(worker() for _ in range(workers)))
        for context in contexts.values():
            await context.close()
        return sorted(results, key=lambda r: r.url)


def check_site(
    site_dir: Path, browser_path: str, screenshots: Path | None = None, workers: int = 3
) -> tuple[list[PageResult], set[str]]:
    """Every page of the built ``site_dir`` at every viewport; and the external hosts asked."""
    from playwright.async_api import async_playwright

    async def run(base: str) -> tuple[list[PageResult], set[str]]:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"]
            )
            try:
                checker = Checker(browser, base, site_dir, screenshots)
                return await checker.run(pages(site_dir), workers), checker.external
            finally:
                await browser.close()

    with serve(site_dir) as base:
        return asyncio.run(run(base))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screenshots", type=Path, help="save key pages as PNG files here")
    parser.add_argument("--site-dir", type=Path, default=ROOT / "site", help="default: site/")
    parser.add_argument("--config", type=Path, default=ROOT / "mkdocs.yml")
    parser.add_argument("--no-build", action="store_true", help="check an existing build")
    parser.add_argument("--workers", type=int, default=3, help="pages open at once (default 3)")
    args = parser.parse_args(argv)

    browser_path = find_browser()
    if browser_path is None:
        print("no chromium found (apt-get install chromium, or set CHROMIUM)", file=sys.stderr)
        return 2
    try:
        import playwright  # noqa: F401  (only its driver: the browser is the system one)
    except ImportError:
        print("playwright is not installed (pip install playwright)", file=sys.stderr)
        return 2
    started = time.monotonic()
    if not args.no_build:
        build(args.site_dir.resolve(), args.config.resolve())
    results, external = check_site(
        args.site_dir.resolve(), browser_path, args.screenshots, args.workers
    )
    if external:
        print(f"external hosts requested (blocked): {', '.join(sorted(external))}")
    failed = [r for r in results if r.problems]
    for result in failed:
        print(f"FAIL {result.url}")
        for problem in result.problems:
            print(f"     {problem}")
    elapsed = time.monotonic() - started
    print(
        f"{len(results) - len(failed)}/{len(results)} page views passed "
        f"({len(results) // len(VIEWPORTS)} pages x {len(VIEWPORTS)} viewports, {elapsed:.1f} s)"
    )
    if args.screenshots is not None:
        print(f"screenshots in {args.screenshots}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
