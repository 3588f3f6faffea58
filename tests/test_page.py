"""The status page at `/`, in a real browser: Debian's Chromium, headless, driven by
Playwright for Python against a daemon running in the test's event loop."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
import yaml
from conftest import Harness, StartDaemon, missing, refused, target
from prometheus_client.parser import text_string_to_metric_families
from wsserver import WSTestServer

from monitor import pagescript
from monitor.aiohooks import Hooks

playwright = pytest.importorskip("playwright.async_api")

ROOT = Path(__file__).resolve().parent.parent
AXE = ROOT / "tests/a11y/node_modules/axe-core/axe.min.js"
# What the machine's network allows a headless Chromium (it must not call home), and a
# profile of its own (Playwright makes a fresh one per launch).
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
PASSWORD = "correct horse battery staple"
TOKEN = "s3cret-token-123"
USERINFO_PASSWORD = "pa55-in-the-url"
PHONE = {"width": 390, "height": 844}

OpenPage = Callable[..., Awaitable[Any]]


@pytest.fixture
def receive_path(proven_hooks: Hooks) -> Hooks:
    """The page reads the API, not the wire: one receive path is enough here."""
    return proven_hooks


@pytest.fixture
async def open_page() -> AsyncIterator[OpenPage]:
    """Open a URL in a new headless Chromium context (optionally with basic-auth
    credentials or a phone's viewport); everything is closed when the test ends."""
    chromium = shutil.which("chromium") or missing("Debian's `chromium`")
    async with playwright.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_FLAGS
        )
        try:

            async def open_(url: str, **context: Any) -> Any:
                ctx = await browser.new_context(**context)
                page = await ctx.new_page()
                # Before any of the page's own script runs: note every CSP violation.
                await page.add_init_script(
                    "window.cspViolations = [];"
                    "document.addEventListener('securitypolicyviolation',"
                    " (e) => window.cspViolations.push(e.violatedDirective));"
                )
                await page.goto(url)
                return page

            yield open_
        finally:
            await browser.close()


async def until(page: Any, predicate: str, arg: Any = None, timeout: float = 5.0) -> None:
    """Wait until the JavaScript function `predicate(arg)` is true in the page. (Playwright's
    wait_for_function polls with eval, which the page's CSP forbids, as it should.)"""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await page.evaluate(predicate, arg):
        if loop.time() > deadline:
            raise AssertionError(f"not true within {timeout} s: {predicate}")
        await asyncio.sleep(0.05)


async def rows(page: Any, count: int) -> dict[str, str]:
    """Once the table shows `count` targets: each target's name and the state it shows."""
    await until(page, "(n) => document.querySelectorAll('#rows th[scope=row]').length === n", count)
    shown: dict[str, str] = await page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('#rows tr')].map((tr) =>
            [tr.querySelector('th span').textContent,
             tr.querySelector('.badge').lastChild.textContent]))"""
    )
    return shown


async def connected_series(h: Harness) -> dict[str, float]:
    """`wsmon_connected` of every target, as /metrics answers it."""
    async with aiohttp.ClientSession() as http, http.get(f"{h.base_url}/metrics") as r:
        text = await r.text()
    return {
        s.labels["target"]: s.value
        for family in text_string_to_metric_families(text)
        if family.name == "wsmon_connected"
        for s in family.samples
    }


async def state_shown(page: Any, name: str, wanted: str) -> None:
    """Wait until the page shows target `name` in state `wanted`."""
    await until(
        page,
        """([name, wanted]) => [...document.querySelectorAll('#rows tr')].some((tr) =>
            tr.querySelector('th span')?.textContent === name &&
            tr.querySelector('.badge')?.lastChild.textContent === wanted)""",
        [name, wanted],
    )


class TestTargets:
    async def test_lists_the_targets_with_the_states_of_metrics(
        self, start_daemon: StartDaemon, server: WSTestServer, open_page: OpenPage
    ) -> None:
        """Every target is listed, problems first, in the state that `wsmon_connected` says;
        the summary counts them."""
        h = await start_daemon(
            target("alpha", server.url), target("bravo", server.url), refused("zulu-down")
        )
        await h.wait_for(lambda: h.value("wsmon_connected", target="bravo") == 1)
        await h.wait_for(lambda: h.value("wsmon_connect_failures_total", target="zulu-down",
                                          reason="refused") >= 1)  # fmt: skip
        page = await open_page(f"{h.base_url}/?refresh=0.5")
        shown = await rows(page, 3)
        assert list(shown) == ["zulu-down", "alpha", "bravo"]  # problems first, then by name
        connected = await connected_series(h)
        assert {name: state == "connected" for name, state in shown.items()} == {
            name: value == 1 for name, value in connected.items()
        }
        assert shown["zulu-down"] == "failed"
        summary = await page.text_content("#summary")
        assert summary == "2 connected of 3 targets, 1 problem"
        assert await page.text_content("#every") == "0.5 s"
        assert await page.evaluate("window.cspViolations") == []

    async def test_updates_in_place_when_a_connection_drops(
        self, start_daemon: StartDaemon, server: WSTestServer, open_page: OpenPage
    ) -> None:
        """When the server resets the connection the row changes to a state that is not
        connected, shows the close (1006, network), and turns connected again once the
        server lets it back in, all without the page loading again."""
        slow = {"initial_delay": "2s", "max_delay": "2s"}
        h = await start_daemon(target("t", server.url, reconnect=slow))
        await h.wait_for(lambda: h.value("wsmon_connected", target="t") == 1)
        page = await open_page(f"{h.base_url}/?refresh=0.5")
        navigations: list[str] = []
        page.on("framenavigated", lambda frame: navigations.append(frame.url))
        await state_shown(page, "t", "connected")
        await page.evaluate("window.sameDocument = true")
        server.handshake_status = 503  # no way back in for now
        await server.abort_all()
        await h.wait_for(lambda: h.value("wsmon_connected", target="t") == 0)
        badge = "document.querySelector('#rows .badge').lastChild.textContent"
        await until(page, f"() => {badge} !== 'connected'")
        assert (await connected_series(h))["t"] == 0
        assert "1006 network" in (await page.text_content("#rows tr td:nth-child(5)") or "")
        assert "1 problem" in (await page.text_content("#summary") or "")
        server.handshake_status = None
        await state_shown(page, "t", "connected")
        assert await page.evaluate("window.sameDocument") is True
        assert navigations == []

    async def test_search_state_filter_and_paging(
        self, start_daemon: StartDaemon, open_page: OpenPage
    ) -> None:
        """The search box and the state filter narrow the list; with more targets than a
        page holds, Next and Previous move through them, all by keyboard."""
        names = [f"t{i:03d}" for i in range(pagescript.PAGE_SIZE + 5)]
        h = await start_daemon(*(refused(n) for n in names), refused("other"))
        page = await open_page(f"{h.base_url}/?refresh=0.5")
        await rows(page, pagescript.PAGE_SIZE)
        assert await page.text_content("#range") == f"1\u2013100 of {len(names) + 1}"
        # Tab goes to the search box, the state filter, then the paging buttons.
        order = []
        for _ in range(4):
            await page.keyboard.press("Tab")
            order.append(await page.evaluate("document.activeElement.id"))
            outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
            assert outline != "none", order[-1]  # the focus is visible
        assert order == ["q", "state", "prev", "next"]
        await page.keyboard.press("Enter")  # Next
        await rows(page, len(names) + 1 - pagescript.PAGE_SIZE)
        assert await page.text_content("#range") == f"101\u2013106 of {len(names) + 1}"
        await page.keyboard.press("Shift+Tab")
        await page.keyboard.press("Enter")  # Previous
        await rows(page, pagescript.PAGE_SIZE)
        await page.focus("#q")
        await page.keyboard.type("OTH")  # any case
        shown = await rows(page, 1)
        assert list(shown) == ["other"]
        await page.fill("#q", "")
        await page.select_option("#state", "connected")
        await until(page, "() => document.querySelector('#range').textContent === 'none'")
        assert "No target matches" in (await page.text_content("#rows") or "")

    async def test_the_poll_interval_is_bounded(
        self, start_daemon: StartDaemon, server: WSTestServer, open_page: OpenPage
    ) -> None:
        """`?refresh=` below 0.5 s polls every 0.5 s; without it, every 3 s."""
        h = await start_daemon(target("t", server.url))
        page = await open_page(f"{h.base_url}/?refresh=0.01")
        assert await page.text_content("#every") == "0.5 s"
        page = await open_page(f"{h.base_url}/")
        assert await page.text_content("#every") == "3 s"


class TestSecurity:
    async def test_no_secret_of_a_target_url_reaches_the_page_or_the_api(
        self, start_daemon: StartDaemon, server: WSTestServer, open_page: OpenPage
    ) -> None:
        """A token in the query and a password in the URL are shown as [REDACTED]: neither
        the page (as drawn) nor the API's JSON holds them."""
        port = server.port
        h = await start_daemon(
            target("query", f"ws://127.0.0.1:{port}/ws?token={TOKEN}&app_id=1089"),
            target("userinfo", f"ws://monitor:{USERINFO_PASSWORD}@127.0.0.1:{port}/ws"),
        )
        await h.wait_for(lambda: h.value("wsmon_connected", target="userinfo") == 1)
        page = await open_page(f"{h.base_url}/?refresh=0.5")
        await rows(page, 2)
        html = await page.content()
        async with aiohttp.ClientSession() as http, http.get(f"{h.base_url}/api/v1/targets") as r:
            api = await r.text()
        for text in (html, api):
            assert TOKEN not in text
            assert USERINFO_PASSWORD not in text
        urls = await page.eval_on_selector_all("#rows .url", "els => els.map(e => e.textContent)")
        assert sorted(urls) == [
            f"ws://127.0.0.1:{port}/ws?token=[REDACTED]&app_id=1089",
            f"ws://monitor:[REDACTED]@127.0.0.1:{port}/ws",
        ]

    async def test_basic_auth_guards_the_page_and_the_api_not_healthz(
        self,
        start_daemon: StartDaemon,
        server: WSTestServer,
        open_page: OpenPage,
        tmp_path: Path,
    ) -> None:
        """With basic auth, `/` and `/api/v1/targets` answer 401 without credentials and
        work with them (the page's own requests carry the browser's credentials);
        `/healthz` stays public with `public_healthz: true`."""
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
        web = tmp_path / "web.yml"
        web.write_text(yaml.safe_dump({"basic_auth_users": {"ops": hashed}}))
        h = await start_daemon(
            target("t", server.url), web_config_file=str(web), public_healthz=True
        )
        good = {"Authorization": "Basic " + base64.b64encode(f"ops:{PASSWORD}".encode()).decode()}
        async with aiohttp.ClientSession() as http:
            for path in ("/", "/api/v1/targets"):
                async with http.get(h.base_url + path) as r:
                    assert r.status == 401, path
                async with http.get(h.base_url + path, headers=good) as r:
                    assert r.status == 200, path
            async with http.get(f"{h.base_url}/healthz") as r:
                assert r.status == 200
        page = await open_page("about:blank")
        with pytest.raises(playwright.Error, match="ERR_INVALID_AUTH_CREDENTIALS"):
            await page.goto(f"{h.base_url}/")  # the 401, and no credentials to answer it
        credentials = {"username": "ops", "password": PASSWORD}
        page = await open_page("about:blank", http_credentials=credentials)
        assert (await page.goto(f"{h.base_url}/?refresh=0.5")).status == 200
        assert list(await rows(page, 1)) == ["t"]

    async def test_the_page_asks_for_nothing_but_its_api(
        self, start_daemon: StartDaemon, server: WSTestServer, open_page: OpenPage
    ) -> None:
        """The page loads no other resource (no CDN, no favicon), its CSP allows exactly its
        inline style and script, and it breaks none of it."""
        h = await start_daemon(target("t", server.url))
        async with aiohttp.ClientSession() as http, http.get(f"{h.base_url}/") as r:
            csp = r.headers["Content-Security-Policy"]
            body = await r.text()
        for inline in re.findall(r"<(?:script|style)>(.*?)</(?:script|style)>", body, re.S):
            digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in csp
        assert "default-src 'none'" in csp
        assert "connect-src 'self'" in csp
        requested: list[str] = []
        page = await open_page("about:blank")
        page.on("request", lambda req: requested.append(req.url))
        await page.goto(f"{h.base_url}/?refresh=0.5")
        await rows(page, 1)
        await page.wait_for_timeout(1200)  # two more polls
        assert requested[0] == f"{h.base_url}/?refresh=0.5"
        polls = requested[1:]
        assert len(polls) >= 3
        assert all(u.startswith(f"{h.base_url}/api/v1/targets?") for u in polls), requested
        assert await page.evaluate("window.cspViolations") == []


class TestAccessibility:
    @pytest.mark.parametrize("viewport", [None, PHONE], ids=["laptop", "phone"])
    async def test_axe_reports_no_violation(
        self,
        start_daemon: StartDaemon,
        server: WSTestServer,
        open_page: OpenPage,
        viewport: dict[str, int] | None,
    ) -> None:
        """axe-core, run in the page with a target in every kind of row (connected with
        sparklines, connected with failing probes, refused, closed), finds nothing at any
        impact; on a phone the page needs no sideways scrolling."""
        if not AXE.exists():
            missing("axe-core (`npm ci --prefix tests/a11y`)")
        failing = [{"name": "bad", "send": {"nope": 1}, "interval": "100ms", "timeout": "80ms"}]
        h = await start_daemon(
            target("ok", server.url),
            target("probes-failing", server.url, probes=failing),
            refused("down"),
        )
        await h.wait_for(lambda: h.value("wsmon_probe_rtt_seconds_count", target="ok",
                                          probe="ping") >= 3)  # fmt: skip
        # axe is injected as an inline script, which the page's CSP rightly refuses.
        context: dict[str, Any] = {"bypass_csp": True}
        if viewport:
            context["viewport"] = viewport
        page = await open_page(f"{h.base_url}/?refresh=0.5", **context)
        await rows(page, 3)
        await until(page, "() => document.querySelector('#rows svg.spark') !== null")
        await until(page, "() => document.querySelector('#rows .note') !== null")
        await page.add_script_tag(path=str(AXE))
        result = await page.evaluate("axe.run(document, {resultTypes: ['violations']})")
        violations = [
            (v["id"], v["impact"], [n["target"] for n in v["nodes"]]) for v in result["violations"]
        ]
        assert violations == []
        if viewport:
            width = await page.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"]
