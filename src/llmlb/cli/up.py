"""``llmlb up``: a router in this process and one local node as its child, wired together.

The single-machine default: the small bundled model is installed into the store, the node
registers with the router's own node token, and the command prints the URL and a curl line
once the node is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time

from llmlb.common.settings import RouterSettings
from llmlb.models.smallmodel import SMALL_MODEL_NAME, install_small_model
from llmlb.models.store import ModelStore
from llmlb.router.server import run_router
from llmlb.router.service import RouterService

log = logging.getLogger(__name__)

NODE_READY_TIMEOUT = 120.0


def curl_line(url: str) -> str:
    body = (
        '{"model": "' + SMALL_MODEL_NAME + '", "messages": [{"role": "user", '
        '"content": "What is the capital of France?"}], "max_tokens": 32, "temperature": 0}'
    )
    return f"curl -s {url}/v1/chat/completions -H 'content-type: application/json' -d '{body}'"


async def run_up(settings: RouterSettings, node_port: int) -> None:
    install_small_model(ModelStore(settings.models_dir))
    node: subprocess.Popen[bytes] | None = None
    watcher: asyncio.Task[None] | None = None

    async def start_node(url: str, service: RouterService) -> None:
        nonlocal node, watcher
        token = service.provisioning.node_token_path.read_text().strip()
        env = {**os.environ, "LLMLB_HOME": str(settings.home), "LLMLB_NODE_TOKEN": token}
        node = subprocess.Popen(  # noqa: ASYNC220 (returns at once; the node runs beside us)
            [sys.executable, "-m", "llmlb", "node", "--router", url, "--allow-cpu",
             "--host", "127.0.0.1", "--port", str(node_port), "--name", "local",
             "--log-format", settings.log_format, "--log-level", settings.log_level,
             # The local node speaks plain HTTP on loopback; it checks an HTTPS router.
             *(["--tls-ca", str(settings.tls_ca)] if settings.tls_ca else [])],
            env=env, stdout=subprocess.DEVNULL, preexec_fn=_die_with_parent,
        )  # fmt: skip
        watcher = asyncio.create_task(_announce_when_ready(url, service, node))

    try:
        await run_router(settings, start_node)
    finally:
        if watcher is not None:
            watcher.cancel()
        if node is not None and node.poll() is None:
            # Blocking on purpose: this runs while ``up`` is being cancelled, where an await
            # (the thread of a to_thread wait) could be cut short and leave the node behind.
            node.terminate()
            try:
                node.wait(30)
            except subprocess.TimeoutExpired:
                log.warning("the local node did not stop within 30 s; killing it")
                node.kill()
                node.wait()  # reaped before we go: no node outlives ``llmlb up``


def _die_with_parent() -> None:
    """In the child: if ``llmlb up`` is killed outright, the node goes with it (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


async def _announce_when_ready(
    url: str, service: RouterService, node: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + NODE_READY_TIMEOUT
    while time.monotonic() < deadline:
        if node.poll() is not None:
            log.error("the local node exited with status %s", node.returncode)
            return
        if any(n["status"] == "ready" for n in service.fleet.nodes()):
            print(f"\nllmlb is up: {url} (OpenAI-compatible, model {SMALL_MODEL_NAME})", flush=True)
            print(f"dashboard: {url}/dashboard", flush=True)
            print(f"try:\n  {curl_line(url)}\n", flush=True)
            return
        await asyncio.sleep(0.2)
    log.error("the local node did not become ready within %.0f s", NODE_READY_TIMEOUT)
    with contextlib.suppress(ProcessLookupError):
        node.terminate()
