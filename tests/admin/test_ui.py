"""The web UI in a real headless Chromium, driven over the DevTools protocol.

A shadowproxy fed with the demo upstreams (a secondary too, so noise is learned)
serves its admin UI; the browser clicks from the endpoints table to the demo's
regression (endpoint ``user``, field ``$.plan``) and its side-by-side bodies, checks
the console stayed clean, and takes screenshots (valid PNGs in the test's tmp dir;
also copied to ``$SHADOWPROXY_UI_SCREENSHOTS`` when set).

Chromium: Debian's ``chromium`` (``.ci/run`` installs it). Missing → skipped locally,
a failure under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.admin.test_admin import TOKEN, Demo, demo_plan
from tests.cdp import Chromium, Page, find_chromium

CHROMIUM = find_chromium()


@pytest.fixture(autouse=True)
def _need_chromium() -> None:
    if CHROMIUM is None:
        msg = "chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(msg + "; CI must run the browser tests")
        pytest.skip(msg)


@pytest_asyncio.fixture
async def demo() -> AsyncIterator[Demo]:
    d = await Demo.start()
    await d.send(demo_plan(400))
    await d.settle()
    yield d
    await d.stop()


@pytest_asyncio.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Chromium]:
    async with Chromium.launch(tmp_path) as b:
        yield b


def check_png(data: bytes, width: int, height: int) -> None:
    """A well-formed PNG (signature, chunk CRCs, IHDR, IDAT inflating to the right
    size, IEND) of the given size that is not a blank page."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ihdr, end = 8, b"", None, False
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        chunk = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + chunk) == crc, f"bad CRC in {kind!r}"
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        elif kind == b"IEND":
            end = True
        pos += 12 + length
    assert ihdr is not None and end
    w, h, depth, color, _c, _f, interlace = ihdr
    assert (w, h) == (width, height)
    assert depth == 8 and color in (2, 6) and interlace == 0
    raw = zlib.decompress(idat)
    channels = 3 if color == 2 else 4
    assert len(raw) == h * (1 + w * channels)
    # a rendered page, not a blank one: many distinct byte values, a sane file size
    assert len(set(raw[: 1 << 20])) > 64
    assert 20_000 < len(data) < 8_000_000


async def save_screenshot(page: Page, path: Path, width: int = 1400,
                          height: int = 1000) -> bytes:
    png = await page.screenshot()
    path.write_bytes(png)
    check_png(png, width, height)
    out = os.environ.get("SHADOWPROXY_UI_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(out) / path.name)
    return png


async def texts(page: Page, selector: str) -> list[str]:
    return await page.evaluate(
        f"[...document.querySelectorAll({json.dumps(selector)})].map(e => e.textContent)")


def assert_clean_console(page: Page) -> None:
    errors = page.errors()
    warnings = [c for c in page.console if c["level"] == "warning"]
    assert not errors, errors
    assert not warnings, warnings


async def test_click_through_to_the_regression(demo: Demo, browser: Chromium,
                                               tmp_path: Path) -> None:
    page = await browser.new_page()
    await page.navigate(demo.url + "/")
    # the server wants a token: the page asks for it (without a failed request first)
    await page.wait_for("!document.querySelector('#token-dialog').hidden")
    await page.evaluate(f"""(() => {{
        document.querySelector('#token-input').value = {json.dumps(TOKEN)};
        document.querySelector('#token-form').requestSubmit(); }})()""")
    await page.wait_for("document.documentElement.dataset.ready === '1'")
    await page.wait_for("document.querySelector('#endpoints tr[data-endpoint=\"user\"]')")
    names = await texts(page, "#endpoints a.endpoint-link")
    assert names[0] == "user" and {"products", "search"} <= set(names)
    user_row = await page.evaluate(
        "document.querySelector('#endpoints tr[data-endpoint=\"user\"]').innerText")
    assert "$.plan" in user_row
    # latency: the candidate beside the secondary, the side the latency checks judge
    marks = await page.evaluate(
        "[...document.querySelectorAll('#endpoints tr[data-endpoint=\"user\"] td[data-baseline]')]"
        ".map(td => [td.dataset.baseline, td.querySelector('.judged') ? "
        "td.querySelector('.judged').textContent : ''])")
    assert len(marks) == 2 and all(b == "secondary" and t.startswith("sec ")
                                   for b, t in marks), marks
    assert await page.evaluate("sessionStorage.getItem('shadowproxy.token')") == TOKEN
    summary = await page.evaluate("document.querySelector('#summary').innerText")
    assert "400" in summary and "REQUESTS" in summary.upper()
    await save_screenshot(page, tmp_path / "ui-endpoints.png")

    # → the endpoint: its fields, the regression first, noise flagged with evidence
    await page.click('#endpoints tr[data-endpoint="user"] a.endpoint-link')
    await page.wait_for("document.querySelector('#fields tbody tr[data-field]')")
    assert (await page.evaluate("location.hash")) == "#/e/user"
    fields = await texts(page, "#fields a.field-link")
    assert fields[0] == "$.plan" and "$.meta.request_id" in fields
    plan_row = await page.evaluate(
        "document.querySelector('#fields tr[data-field=\"$.plan\"]').innerText")
    assert "real" in plan_row and "changed" in plan_row and "sec 0/" in plan_row
    noise_row = await page.evaluate(
        "document.querySelector('#fields tr[data-field=\"$.meta.request_id\"]').innerText")
    assert "noise" in noise_row

    # → the field: sample exchanges, side by side, the differing path highlighted
    await page.click('#fields tr[data-field="$.plan"] a.field-link')
    await page.wait_for("document.querySelector('#exchange .pane-candidate .mark-focus')")
    explain = await page.evaluate("document.querySelector('#field-panel .explain').innerText")
    assert "real difference" in explain and "never differed" in explain
    cand = await texts(page, "#exchange .pane-candidate .mark-focus")
    prim = await texts(page, "#exchange .pane-primary .mark-focus")
    assert len(cand) == 1 and len(prim) == 1
    assert cand[0].startswith('"plan": "free"'), cand
    assert prim[0].startswith('"plan": "') and '"free"' not in prim[0], prim
    # the noise fields are marked as noise, not as differences
    noise_marks = await texts(page, "#exchange .pane-candidate .mark-noise")
    assert any(t.startswith('"request_id"') for t in noise_marks), noise_marks
    assert await page.evaluate(
        "document.querySelectorAll('#exchange .pane-candidate .mark-diff').length") == 1
    # the secondary is shown too, and agrees with the primary on the plan
    sec = await page.evaluate("document.querySelector('#exchange .pane-secondary').innerText")
    assert prim[0].strip().rstrip(",") in sec
    detail = await page.evaluate("document.querySelector('#exchange pre.detail').textContent")
    assert "plan" in detail and "free" in detail
    # no secret reached the page
    html = await page.evaluate("document.documentElement.outerHTML")
    assert "client-secret-bearer" not in html
    await page.evaluate("document.querySelector('#exchange').scrollIntoView()")
    await save_screenshot(page, tmp_path / "ui-field.png")
    assert_clean_console(page)


async def test_views_filters_and_mirror_switch(demo: Demo, browser: Chromium,
                                               tmp_path: Path) -> None:
    page = await browser.new_page()
    # the token in the URL fragment (never sent to a server), removed from the address
    await page.navigate(f"{demo.url}/#token={TOKEN}")
    await page.wait_for("document.documentElement.dataset.ready === '1'")
    assert await page.evaluate("location.hash") == "#/"
    assert await page.evaluate("document.querySelector('#token-dialog').hidden") is True
    await page.wait_for("document.querySelectorAll('#endpoints tbody tr').length >= 4")

    # endpoint filter and time window
    await page.evaluate("""(() => { const f = document.querySelector('#endpoint-filter');
        f.value = 'prod'; f.dispatchEvent(new Event('input')); })()""")
    assert await texts(page, "#endpoints a.endpoint-link") == ["products"]
    await page.evaluate("""(() => { const w = document.querySelector('#window');
        w.value = '15m'; w.dispatchEvent(new Event('change')); })()""")
    await page.wait_for("document.querySelectorAll('#endpoints a.endpoint-link').length === 1")
    assert await page.evaluate("sessionStorage.getItem('shadowproxy.window')") == "15m"

    # exchanges list filtered by endpoint and verdict
    await page.evaluate("location.hash = '#/exchanges?endpoint=user&verdict=diff'")
    await page.wait_for("document.querySelector('#exchanges tbody tr')")
    verdicts = set(await texts(page, "#exchanges tbody td:nth-child(4)"))
    endpoints = set(await texts(page, "#exchanges tbody td:nth-child(2)"))
    assert verdicts == {"diff"} and endpoints == {"user"}
    assert await page.evaluate("document.querySelector('#filter-verdict').value") == "diff"
    # one exchange, by its permalink
    await page.click("#exchanges tbody tr td.path a")
    await page.wait_for("document.querySelector('#differences tr[data-path=\"$.plan\"]')")
    assert (await page.evaluate("location.hash")).startswith("#/x/")

    # learned noise, with its evidence
    await page.evaluate("location.hash = '#/noise'")
    await page.wait_for("document.querySelector('#noise tbody tr')")
    noise = await page.evaluate("document.querySelector('#noise').innerText")
    assert "$.meta.request_id" in noise and "$.plan" not in noise

    # the running config, redacted
    await page.evaluate("location.hash = '#/config'")
    await page.wait_for("document.querySelector('#config .json')")
    cfg = await page.evaluate("document.querySelector('#config').innerText")
    assert "<redacted>" in cfg and TOKEN not in cfg and '"upstreams"' in cfg

    # the mirror switch: off in the page → off in the proxy
    assert demo.control.mirror_state == (True, 1.0)
    await page.wait_for("document.querySelector('#mirror-enabled').checked === true")
    await page.click("#mirror-enabled")
    await page.wait_for("document.querySelector('#mirror-label').textContent === 'Mirror off'")
    assert demo.control.mirror_state[0] is False
    await demo.send([("GET", "/api/users/5", None)] * 3)
    await demo.settle()
    assert demo.control.stats.total("not_eligible", "disabled") == 3
    # the sample rate field: invalid input is refused in the page, a valid one applied
    await page.evaluate("""(() => { document.querySelector('#mirror-sample').value = '250';
        document.querySelector('#mirror-form').requestSubmit(); })()""")
    await page.wait_for("document.querySelector('#toast').className.includes('bad')")
    assert demo.control.mirror_state == (False, 1.0)
    await page.evaluate("""(() => { document.querySelector('#mirror-sample').value = '25';
        document.querySelector('#mirror-form').requestSubmit(); })()""")
    await page.wait_for("document.querySelector('#toast').textContent.includes('25.0%')")
    assert demo.control.mirror_state == (False, 0.25)
    await page.click("#mirror-enabled")
    await page.wait_for("document.querySelector('#mirror-label').textContent === 'Mirror on'")
    assert demo.control.mirror_state == (True, 0.25)
    await page.evaluate("location.hash = '#/'")
    await page.wait_for("document.querySelector('#endpoints tbody tr')")
    await page.evaluate("""(() => { const f = document.querySelector('#endpoint-filter');
        f.value = ''; f.dispatchEvent(new Event('input')); })()""")
    await page.wait_for("document.querySelectorAll('#endpoints tbody tr').length >= 4")
    await save_screenshot(page, tmp_path / "ui-overview.png")
    assert_clean_console(page)


async def test_wrong_token_is_asked_again(demo: Demo, browser: Chromium) -> None:
    page = await browser.new_page()
    await page.navigate(f"{demo.url}/#token=not-the-token")
    await page.wait_for("!document.querySelector('#token-dialog').hidden")
    err = await page.evaluate("document.querySelector('#token-error').textContent")
    assert "not accepted" in err
    await page.evaluate(f"""(() => {{
        document.querySelector('#token-input').value = {json.dumps(TOKEN)};
        document.querySelector('#token-form').requestSubmit(); }})()""")
    await page.wait_for("document.querySelector('#endpoints tr[data-endpoint=\"user\"]')")
    # the only console errors are the refused requests of the wrong token
    others = [e for e in page.errors() if not ("401" in e["text"] and e["source"] == "network")]
    assert not others, others


def _variant_app(role: str) -> Any:
    """Upstreams whose answers differ in every way the page has to show."""
    from aiohttp import web

    cand = role == "candidate"

    async def text(request: web.Request) -> web.Response:
        lines = ["alpha", "beta-2" if cand else "beta", "gamma", "delta"]
        return web.Response(text="\n".join(lines) + "\n")

    async def shape(request: web.Request) -> web.Response:
        body: dict[str, object] = {"id": 1,
                                   "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}],
                                   "odd key": "x"}
        if cand:
            body["new_field"] = True          # added
            del body["odd key"]               # removed
            body["items"][1]["qty"] = 3       # type: ignore[index]
        return web.json_response(body, headers={"X-Feature": "on" if cand else "off"})

    async def status(request: web.Request) -> web.Response:
        return web.json_response({"ok": not cand}, status=500 if cand else 200)

    async def slow(request: web.Request) -> web.Response:
        if cand:
            await asyncio.sleep(1.5)
        return web.json_response({"slow": True})

    app = web.Application()
    app.router.add_get("/text", text)
    app.router.add_get("/shape", shape)
    app.router.add_get("/status", status)
    app.router.add_get("/slow", slow)
    return app


async def test_every_kind_of_difference_renders(browser: Chromium, tmp_path: Path) -> None:
    from tests.support import Upstream, config

    ups = {r: await Upstream(_variant_app(r)).start() for r in ("primary", "candidate")}
    cfg = config(ups["primary"].url, ups["candidate"].url, mirror={"timeout": "500ms"},
                 admin={"listen": "127.0.0.1:0", "token": TOKEN})
    d = await Demo.around(cfg, ups)
    try:
        await d.send([("GET", p, None) for p in ("/text", "/shape", "/status", "/slow")])
        await d.settle()
        rows = (await d.get("/api/v1/exchanges?limit=10"))["exchanges"]
        ids = {r["path"]: r["id"] for r in rows}
        assert set(ids) == {"/text", "/shape", "/status", "/slow"}
        page = await browser.new_page()
        await page.navigate(f"{d.url}/#token={TOKEN}")
        await page.wait_for("document.documentElement.dataset.ready === '1'")

        async def open_exchange(path: str) -> None:
            await page.evaluate(f"location.hash = '#/x/' + {json.dumps(ids[path])}")
            await page.wait_for(
                f"document.querySelector('#exchange[data-id={json.dumps(ids[path])}]')")

        # text bodies: the changed line is marked on both sides
        await open_exchange("/text")
        assert await texts(page, ".pane-primary .text .mark-diff") == ["2beta"]
        assert await texts(page, ".pane-candidate .text .mark-diff") == ["2beta-2"]
        # JSON: changed, added (absent on the primary), removed (absent on the candidate),
        # an odd key in bracket notation, a header
        await open_exchange("/shape")
        paths = set(await texts(page, "#differences td.path"))
        assert {"$.items[1].qty", "$.new_field", "$['odd key']", "header.x-feature"} <= paths
        cand = await texts(page, ".pane-candidate .mark-diff")
        prim = await texts(page, ".pane-primary .mark-diff")
        assert any(t.startswith('"qty": 3') for t in cand)
        assert any(t.startswith('"qty": 2') for t in prim)
        assert any(t.startswith('"new_field": true') for t in cand)
        assert '"new_field": (absent here)' in prim
        assert any(t.startswith('"odd key": "x"') for t in prim)
        assert '"odd key": (absent here)' in cand
        assert any(t.startswith("X-Feature") and "on" in t for t in cand)
        await save_screenshot(page, tmp_path / "ui-shape.png")
        # status
        await open_exchange("/status")
        assert await texts(page, ".pane-candidate .status.mark-diff") == [
            "500 Internal Server Error"]
        # a candidate timeout: an error verdict, the pane says so
        await open_exchange("/slow")
        cand_pane = await page.evaluate("document.querySelector('.pane-candidate').innerText")
        assert "timeout" in cand_pane
        assert await texts(page, "#exchange .badge.error") == ["error"]
        assert_clean_console(page)
    finally:
        await d.stop()


@pytest.mark.server
async def test_an_exchange_says_whose_traffic_it_was(browser: Chromium, pg_url: str) -> None:
    """A PostgreSQL store keeps whose traffic each exchange was (in a fleet the sidecar
    that mirrored it): the exchange's document and page say so."""
    from tests.support import Upstream, config

    ups = {r: await Upstream(_variant_app(r)).start() for r in ("primary", "candidate")}
    cfg = config(ups["primary"].url, ups["candidate"].url, instance="pod-ui-7",
                 store={"url": pg_url, "flush_interval": "50ms"},
                 admin={"listen": "127.0.0.1:0", "token": TOKEN})
    d = await Demo.around(cfg, ups)
    try:
        await d.send([("GET", "/shape", None)])
        await d.settle()
        (row,) = (await d.get("/api/v1/exchanges?limit=10"))["exchanges"]
        doc = await d.get(f"/api/v1/exchanges/{row['id']}")
        assert doc["instance"] == "pod-ui-7"
        page = await browser.new_page()
        await page.navigate(f"{d.url}/#token={TOKEN}")
        await page.wait_for("document.documentElement.dataset.ready === '1'")
        await page.evaluate(f"location.hash = '#/x/' + {json.dumps(row['id'])}")
        await page.wait_for(f"document.querySelector('#exchange[data-id={json.dumps(row['id'])}]')")
        head = await page.evaluate("document.querySelector('#exchange .compare-head').innerText")
        assert "via pod-ui-7" in head, head
        assert_clean_console(page)
    finally:
        await d.stop()
