"""The dashboard in a real browser (Debian's chromium through Playwright) against a real router
with a real node serving the small model, and a fake hub for a download to watch.

Each test is something an operator does. Screenshots of the pages land in
``tests/e2e/screenshots/`` (not committed) for a person to look at.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from playwright.sync_api import Browser, Page, expect

from llmlb.models.smallmodel import SMALL_MODEL_NAME
from llmlb.models.store import ModelStore
from tests.fakeendpoints import FakeEndpoint
from tests.fakehub import FakeHub
from tests.support import (
    Process,
    node_token,
    start_fleet_node,
    start_router,
    wait_until,
    write_tiny_gguf,
)

SCREENSHOTS = Path(__file__).parent / "screenshots"
ADMIN_PASSWORD = "admin-pass-1"
VIEWER_PASSWORD = "viewer-pass-1"
GEMMA_SHA = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


@dataclass
class Console:
    router: Process
    router_home: Path
    node: Process
    hub: FakeHub
    admin_key: str  # for requests made outside the browser

    def http(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.router.url, timeout=120,
            headers={"authorization": f"Bearer {self.admin_key}"},
        )  # fmt: skip

    def node_id(self) -> str:
        with self.http() as http:
            return str(http.get("/api/nodes").json()["data"][0]["id"])


def _catalog(tiny: bytes) -> dict[str, Any]:
    shipped = json.loads(
        (resources.files("llmlb.data") / "supported_models.json").read_text(encoding="utf-8")
    )
    tiny_entry = {
        "name": "tiny-dash",
        "origin": {"hub": {"repo": "test/dash", "file": "model.gguf", "revision": "main"}},
        "size_bytes": len(tiny),
        "sha256": hashlib.sha256(tiny).hexdigest(),
        "required_memory_bytes": 10_000_000,
    }
    return {"models": [*shipped["models"], tiny_entry]}


@pytest.fixture(scope="module")
def console(small_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    logs = tmp_path_factory.mktemp("dashboard-logs")
    tiny = write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "t.gguf", 8, seed=11).read_bytes()
    hub = FakeHub().start()
    hub.add("test/dash", "model.gguf", tiny, hold_at=0.75)
    router_home = tmp_path_factory.mktemp("dashboard-router")
    (router_home / "supported_models.json").write_text(json.dumps(_catalog(tiny)))
    env = {"HF_ENDPOINT": hub.url, "LLMLB_AUTO_DISTRIBUTE": "none",
           "LLMLB_ADMIN_PASSWORD": ADMIN_PASSWORD}  # fmt: skip
    router = start_router(router_home, logs, "--allow-cpu-nodes", "--heartbeat-interval", "1",
                          env=env)  # fmt: skip
    node_home = tmp_path_factory.mktemp("dashboard-node")
    ModelStore(node_home / "models").add(
        SMALL_MODEL_NAME, small_model_path, sha256=GEMMA_SHA, metadata={"chat_template": "qa"}
    )
    node = start_fleet_node(node_home, logs, router, router_home, "gpu-1", "--parallel", "2",
                            "--ctx-size", "1024", env={"HF_ENDPOINT": hub.url})  # fmt: skip
    try:
        # The viewer comes from the terminal, as an operator makes one.
        made = subprocess.run(
            [sys.executable, "-m", "llmlb", "users", "create", "vera", "--role", "viewer",
             "--password-stdin"],
            input=VIEWER_PASSWORD + "\n", capture_output=True, text=True, timeout=60,
            env={"LLMLB_HOME": str(router_home), "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        with httpx.Client(base_url=router.url, timeout=30, auth=("admin", ADMIN_PASSWORD)) as http:
            key = http.post("/api/keys", json={"name": "e2e-admin", "scopes": ["admin"]}).json()
            wait_until(lambda: _ready_nodes(http) == 1, 60)
        yield Console(router, router_home, node, hub, key["secret"])
    finally:
        node.stop()
        router.stop()
        hub.stop()


def _ready_nodes(http: httpx.Client) -> int:
    return sum(n["status"] == "ready" for n in http.get("/api/nodes").json()["data"])


def log_in(page: Page, console: Console, user: str = "admin", password: str = ADMIN_PASSWORD,
           where: str = "") -> None:  # fmt: skip
    page.goto(f"{console.router.url}/dashboard{where}")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("form button[type=submit]")
    expect(page.locator("#whoami")).to_contain_text(user)


def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_login_refuses_a_wrong_password_then_shows_the_node(console: Console, page: Page) -> None:
    page.goto(f"{console.router.url}/dashboard")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", "not-the-password")
    page.click("form button[type=submit]")
    expect(page.get_by_role("alert")).to_have_text("wrong user name or password")
    shot(page, "login")
    page.fill("input[name=password]", ADMIN_PASSWORD)
    page.click("form button[type=submit]")
    expect(page.locator("[data-card=nodes]")).to_have_text("1 / 1")
    shot(page, "overview")
    page.click("nav >> text=Nodes")
    row = page.locator("tr[data-node=gpu-1]")
    expect(row).to_contain_text("ready")
    expect(row).to_contain_text(SMALL_MODEL_NAME)
    expect(row.locator("[data-sync]")).to_have_text("in sync")
    shot(page, "nodes")
    row.get_by_role("link").click()
    expect(page.locator("main")).to_contain_text("Recent log lines")
    expect(page.locator(".logs")).to_contain_text(
        "registered"
    )  # the node's own log, via the router
    shot(page, "node-detail")


def test_distributing_a_model_shows_its_progress_live(console: Console, page: Page) -> None:
    log_in(page, console, where="#/models")
    page.evaluate("window.notReloaded = true")
    row = page.locator("tr[data-model=tiny-dash]")
    row.get_by_role("button", name="Distribute…").click()
    page.get_by_label("gpu-1").check()
    page.get_by_role("button", name="To selected").click()
    cell = page.locator("[data-cell='tiny-dash@gpu-1']")
    bar = cell.get_by_role("progressbar")
    # The hub holds the transfer at three quarters: the bar stands there until released.
    expect(bar).to_have_attribute("aria-valuenow", re.compile(r"^[1-9][0-9]?$"), timeout=60_000)
    # Drawn, not only announced: the filled part's width is the percentage it announces.
    page.wait_for_function(
        """() => {
            const bar = document.querySelector("[data-cell='tiny-dash@gpu-1'] [role=progressbar]");
            if (!bar || !bar.firstChild) return false;
            const share = bar.firstChild.getBoundingClientRect().width
                / bar.getBoundingClientRect().width;
            const said = Number(bar.getAttribute("aria-valuenow")) / 100;
            return said > 0 && Math.abs(share - said) < 0.05;
        }""",
        timeout=30_000,
    )
    shot(page, "models-progress")
    page.evaluate("location.hash = '#/nodes'")  # the node says it is catching up
    syncing = page.locator("tr[data-node=gpu-1] [data-sync]")
    expect(syncing).to_have_attribute("data-sync", "syncing", timeout=30_000)
    expect(syncing).to_contain_text(re.compile(r"syncing \d+ % \(tiny-dash\)"))
    page.evaluate("location.hash = '#/models'")
    console.hub.files["test/dash/model.gguf"].released.set()
    expect(cell).to_contain_text("on disk", timeout=60_000)
    assert page.evaluate("window.notReloaded") is True  # live, not by reloading
    shot(page, "models")


def test_playground_streams_an_answer_with_its_speed(console: Console, page: Page) -> None:
    log_in(page, console, where="#/playground")
    page.select_option("select[name=model]", SMALL_MODEL_NAME)
    page.fill("input[name=max_tokens]", "8")
    page.fill("input[name=temperature]", "0")
    page.fill("textarea[name=message]", "What is the capital of France?")
    page.click("text=Send")
    answer = page.locator(".msg.assistant")
    expect(answer.locator(".meta")).to_contain_text("tokens/s", timeout=120_000)
    expect(answer).to_contain_text("Paris")
    shot(page, "playground")


def test_a_key_made_in_the_page_works_until_revoked(console: Console, page: Page) -> None:
    log_in(page, console, where="#/keys")
    page.fill("input[name=key_name]", "from-the-page")
    page.click("text=Create")
    secret = page.locator("[data-secret]").inner_text().strip()
    assert secret.startswith("llmlb_")
    shot(page, "keys")
    client = openai.OpenAI(base_url=console.router.url + "/v1", api_key=secret, max_retries=0)
    reply = client.chat.completions.create(
        model=SMALL_MODEL_NAME, max_tokens=4,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )  # fmt: skip
    assert reply.choices[0].message.content
    page.locator("tr[data-key=from-the-page]").get_by_role("button", name="Revoke").click()
    expect(page.locator("tr[data-key=from-the-page]")).to_contain_text("revoked")
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        client.chat.completions.create(
            model=SMALL_MODEL_NAME, max_tokens=4, messages=[{"role": "user", "content": "hi"}]
        )


def test_the_audit_page_shows_who_changed_what_and_no_secret(console: Console, page: Page) -> None:
    log_in(page, console, where="#/keys")
    page.fill("input[name=key_name]", "audited-key")
    page.click("text=Create")
    secret = page.locator("[data-secret]").inner_text().strip()
    page.goto(f"{console.router.url}/dashboard#/audit")
    table = page.locator("table[aria-label=audit]")
    expect(table).to_contain_text("POST /api/keys")
    row = table.locator("tr", has_text="audited-key")
    expect(row).to_contain_text("user admin")
    expect(row).to_contain_text("201")
    assert secret not in table.inner_text()
    page.fill("input[name=action]", "POST /api/auth/login")
    page.click("form button[type=submit]")
    expect(table.locator("tbody tr").first).to_contain_text("POST /api/auth/login")
    expect(table).not_to_contain_text("audited-key")
    shot(page, "audit")


def test_an_endpoint_added_in_the_page_serves_beside_the_node(console: Console, page: Page) -> None:
    ollama = FakeEndpoint("ollama").start()
    try:
        log_in(page, console, where="#/nodes")
        page.fill("input[name=endpoint_url]", ollama.url)
        page.select_option("select[name=endpoint_kind]", "ollama")
        page.fill("input[name=endpoint_name]", "studio")
        page.get_by_role("button", name="Add", exact=True).click()
        row = page.locator("tr[data-node=studio]")
        expect(row.locator("[data-kind]")).to_have_text("ollama")
        expect(row).to_contain_text("ready")
        expect(row).to_contain_text("llama3.2-1b")
        shot(page, "endpoints")
        client = openai.OpenAI(base_url=console.router.url + "/v1", api_key=console.admin_key,
                               max_retries=0)  # fmt: skip
        reply = client.chat.completions.create(
            model="llama3.2:1b", messages=[{"role": "user", "content": "Capital of France?"}]
        )
        assert reply.choices[0].message.content == "Paris, says ollama"
        row.get_by_role("button", name="Remove").click()
        expect(page.locator("tr[data-node=studio]")).to_have_count(0)
    finally:
        ollama.stop()


def test_a_model_registered_from_the_hub_in_the_page_joins_the_table(
    console: Console, page: Page, tmp_path: Path
) -> None:
    tiny = write_tiny_gguf(tmp_path / "dash.gguf", 1, seed=21)
    console.hub.add("test/Dash-GGUF", "Dash-Q4_K_M.gguf", tiny)
    log_in(page, console, where="#/models")
    page.fill("input[name=hub_reference]", "hf.co/test/Missing-GGUF")
    page.get_by_role("button", name="Register", exact=True).click()
    expect(page.get_by_role("status").last).to_contain_text("no such repository")
    page.fill("input[name=hub_reference]", "hf.co/test/Dash-GGUF")
    page.get_by_role("button", name="Register", exact=True).click()
    row = page.locator("tr[data-model=dash-q4_k_m]")
    expect(row.locator("[data-registered]")).to_have_text("from Hugging Face")
    shot(page, "models-registered")
    row.get_by_role("button", name="Unregister").click()
    expect(page.locator("tr[data-model=dash-q4_k_m]")).to_have_count(0)


def test_a_viewer_sees_no_write_controls_and_the_api_refuses_them(
    console: Console, page: Page
) -> None:
    log_in(page, console, "vera", VIEWER_PASSWORD, "#/nodes")
    row = page.locator("tr[data-node=gpu-1]")
    expect(row).to_contain_text("ready")
    expect(row.get_by_role("button")).to_have_count(0)
    shot(page, "nodes-viewer")
    node_id = console.node_id()
    # The page's own session, with its CSRF token, as a hand-made request would send it.
    status = page.evaluate(
        """async (id) => {
            const me = await (await fetch('/api/auth/me')).json();
            const r = await fetch(`/api/nodes/${id}/drain`,
                {method: 'POST', headers: {'x-csrf-token': me.csrf_token}});
            return [r.status, (await r.json()).error.code];
        }""",
        node_id,
    )
    assert status == [403, "read_only"]
    with httpx.Client(base_url=console.router.url, auth=("vera", VIEWER_PASSWORD)) as http:
        refused = http.post(f"/api/nodes/{node_id}/drain")
        assert refused.status_code == 403
        assert http.get("/api/nodes").status_code == 200
    with console.http() as http:
        assert http.get(f"/api/nodes/{node_id}").json()["draining"] is False


def test_history_exports_as_csv_with_the_rows_shown(console: Console, page: Page) -> None:
    with console.http() as http:
        for _ in range(2):
            answer = http.post("/v1/chat/completions", json={
                "model": SMALL_MODEL_NAME, "max_tokens": 2,
                "messages": [{"role": "user", "content": "Say yes"}]})  # fmt: skip
            assert answer.status_code == 200
        assert http.post("/v1/chat/completions", json={"model": "no-such-model"}).status_code == 404
        total = http.get("/api/requests", params={"model": SMALL_MODEL_NAME}).json()["total"]
    log_in(page, console, where="#/requests")
    page.fill("input[name=model]", SMALL_MODEL_NAME)
    page.click("text=Filter")
    expect(page.locator("main")).to_contain_text(f"of {total}")
    shot(page, "requests")
    with page.expect_download() as download:
        page.click("text=CSV")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert len(rows) == total
    assert {r["model"] for r in rows} == {SMALL_MODEL_NAME}
    assert {r["status"] for r in rows} == {"200"}


def test_markup_in_names_is_shown_as_text(console: Console, page: Page) -> None:
    label = '<img src=x onerror="window.pwned=1">gpu'
    with console.http() as http:
        node_id = console.node_id()
        answer = http.patch(f"/api/nodes/{node_id}", json={"label": label, "tags": ["a<b"]})
        assert answer.status_code == 400  # a tag is letters, digits and . _ : - only
        assert http.patch(f"/api/nodes/{node_id}", json={"label": label}).status_code == 200
        http.post("/v1/chat/completions", json={"model": "<script>window.pwned=2</script>"})
    try:
        log_in(page, console, where="#/nodes")
        expect(page.locator("tr[data-node=gpu-1]")).to_contain_text(label)
        page.click("nav >> text=Requests")
        expect(page.locator("main table")).to_contain_text("<script>window.pwned=2</script>")
        assert page.evaluate("window.pwned") is None
    finally:
        with console.http() as http:
            http.patch(f"/api/nodes/{node_id}", json={"label": None})


def test_an_action_on_a_node_that_left_says_so(console: Console, page: Page) -> None:
    token = {"authorization": f"Bearer {node_token(console.router_home)}"}
    ghost = {"name": "ghost", "base_url": "http://127.0.0.1:9", "devices": [
        {"kind": "cpu", "name": "x", "memory_total": 1, "memory_free": 1}]}  # fmt: skip
    with httpx.Client(base_url=console.router.url, headers=token) as http:
        assert http.post("/api/nodes", json=ghost).status_code in (200, 201)
    log_in(page, console, where="#/nodes")
    row = page.locator("tr[data-node=ghost]")
    expect(row).to_be_visible()
    with console.http() as http:
        ghost_id = next(
            n["id"] for n in http.get("/api/nodes").json()["data"] if n["name"] == "ghost"
        )
        assert http.delete(f"/api/nodes/{ghost_id}").status_code == 204  # gone behind the page
    row.get_by_role("button", name="Drain").click()
    expect(page.locator(".toast")).to_contain_text("no node")
    expect(row).to_have_count(0)  # the table read again
    expect(page.locator("tr[data-node=gpu-1]")).to_contain_text("ready")


def test_an_ended_session_asks_to_log_in_and_keeps_the_form(console: Console, page: Page) -> None:
    log_in(page, console, where="#/users")
    page.fill("input[name=new_username]", "olga")
    page.fill("input[name=new_user_password]", "olga-pass-1")
    page.context.clear_cookies()  # as when the session expires
    page.click("text=Create")
    expect(page.locator(".overlay")).to_contain_text("Your session ended")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", ADMIN_PASSWORD)
    page.click(".overlay button[type=submit]")
    expect(page.locator("tr[data-user=olga]")).to_contain_text("viewer")  # sent after the login
    shot(page, "users")
    with console.http() as http:
        assert http.delete("/api/users/olga").status_code == 204


def test_the_pages_fit_a_phone_and_the_dark_theme(console: Console, browser: Browser) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="dark")
    page = context.new_page()
    try:
        log_in(page, console)
        assert page.evaluate("document.documentElement.dataset.theme") == "dark"
        for name in ("overview", "nodes", "models", "logs", "metrics"):
            page.goto(f"{console.router.url}/dashboard#/{name}")
            expect(page.locator("#title")).not_to_have_text("")
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{name} is {width} px wide on a 390 px screen"
            shot(page, f"phone-{name}")
        page.goto(f"{console.router.url}/dashboard#/metrics")
        expect(page.locator("table[aria-label=metrics]")).to_contain_text("llmlb_requests_total")
    finally:
        context.close()


def test_a_node_whose_gpu_goes_unused_says_why_in_the_nodes_table(
    console: Console, page: Page
) -> None:
    token = {"authorization": f"Bearer {node_token(console.router_home)}"}
    why = "found NVIDIA H100 (cuda), but the inference engine has no GPU backend"
    engine = {"backend": "cpu", "build": "xllamacpp (AVX2)", "warning": why}
    fallback = {"name": "fallback", "base_url": "http://127.0.0.1:9", "devices": [
        {"kind": "cpu", "name": "x", "memory_total": 1, "memory_free": 1}],
        "load": {"engine": engine}}  # fmt: skip
    with httpx.Client(base_url=console.router.url, headers=token) as http:
        assert http.post("/api/nodes", json=fallback).status_code in (200, 201)
    try:
        log_in(page, console, where="#/nodes")
        row = page.locator("tr[data-node=fallback]")
        expect(row.locator("[data-engine=cpu]")).to_contain_text(why)
        expect(page.locator("tr[data-node=gpu-1] [data-engine=cpu]")).to_have_text("engine: cpu")
    finally:
        with console.http() as http:
            for node in http.get("/api/nodes").json()["data"]:
                if node["name"] == "fallback":
                    http.delete(f"/api/nodes/{node['id']}")
