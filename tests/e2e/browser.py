"""Headless Chromium for the web UI's tests: Debian's ``chromium`` driven by ``playwright`` (its own browser downloads
are never used), plus helpers to open a UI page, wait until it rendered, and check a screenshot.

Chromium comes from the system (``apt-get install chromium``; ``scripts/setup`` installs it when ``CI=true``). When
it is missing the tests fail under ``CI=true`` and skip elsewhere, saying why.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image
from playwright.async_api import Browser, Page, async_playwright

VIEWPORT = {"width": 1280, "height": 900}
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
RENDER_TIMEOUT_MS = 15_000


def chromium_or_skip() -> str:
    """The Chromium executable; a missing one fails the test under ``CI=true`` and skips it elsewhere."""
    for candidate in (os.environ.get("CAPSTAN_CHROMIUM"), *CHROMIUM_CANDIDATES, shutil.which("chromium")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    reason = "no Chromium executable (apt-get install chromium, or set CAPSTAN_CHROMIUM)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true but {reason}; scripts/setup installs it", pytrace=False)
    pytest.skip(reason)


@contextlib.asynccontextmanager
async def open_browser(executable: str) -> AsyncIterator[Browser]:
    """A headless Chromium (closed on exit). Loopback only: no proxy, whatever the environment says."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=executable, headless=True, args=["--no-proxy-server"])
        try:
            yield browser
        finally:
            await browser.close()


class UiPage:
    """One browser tab on the admin UI. JavaScript errors in the page are collected in ``errors``."""

    def __init__(self, page: Page, admin_url: str) -> None:
        self.page = page
        self.admin_url = admin_url
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    async def load(self, route: str = "", *, expect: str = "ready") -> None:
        """A full page load of ``/ui`` (redirected to ``/ui/``) at ``route`` (e.g. ``#/services``)."""
        await self.page.goto(f"{self.admin_url}/ui{route and '/' + route}")
        await self.rendered(expect)

    async def go(self, route: str, *, expect: str = "ready") -> None:
        """Follow an in-app route (``#/invocations?status=suspended``) and wait until it rendered."""
        await self.page.evaluate(
            "route => { document.body.dataset.state = 'loading'; window.location.hash = route; }", route
        )
        await self.rendered(expect)

    async def after(self, selector: str, *, expect: str = "ready") -> None:
        """Click ``selector`` (something that re-renders the page) and wait until the page rendered again."""
        await self.page.evaluate("() => { document.body.dataset.state = 'loading'; }")
        await self.page.click(selector)
        await self.rendered(expect)

    async def rendered(self, expect: str = "ready") -> None:
        """Wait until the page finished rendering, as ``expect``: ``ready``, or ``error`` (with the banner)."""
        await self.page.wait_for_selector(
            "body[data-state=ready], body[data-state=error]", state="attached", timeout=RENDER_TIMEOUT_MS
        )
        state = await self.page.get_attribute("body", "data-state")
        assert state == expect, f"page {self.page.url} rendered as {state}: {await self.banner()!r}"

    async def text(self, selector: str = "#main") -> str:
        return await self.page.inner_text(selector)

    async def banner(self) -> str:
        if await self.page.is_hidden("#banner"):
            return ""
        return await self.page.inner_text("#banner")

    async def shot(self, path: Path, *, min_colors: int = 64) -> Image.Image:
        """Screenshot the viewport to ``path`` and check the picture: the viewport's size, not blank (no colour
        covers more than 97% of it) and drawn (at least ``min_colors`` distinct colours: text, badges, borders)."""
        png = await self.page.screenshot(path=str(path))
        image = Image.open(io.BytesIO(png)).convert("RGB")
        assert image.size == (VIEWPORT["width"], VIEWPORT["height"]), image.size
        colors = image.getcolors(maxcolors=1 << 20)
        assert colors is not None
        assert len(colors) >= min_colors, f"{path.name}: only {len(colors)} distinct colours"
        dominant = max(count for count, _ in colors)
        assert dominant < 0.97 * image.width * image.height, f"{path.name}: one colour covers the page"
        return image
