"""``llmlb node``, ``serve``, ``up`` and ``status``: running and watching the system."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from llmlb.cli.base import (
    cli_settings,
    common_options,
    engine_text,
    engine_warnings,
    fail,
    main,
    remote_admin,
    remote_options,
    router_options,
    router_url,
    serve_until_stopped,
    sync_text,
    with_admin,
)
from llmlb.common.errors import LlmlbError
from llmlb.common.settings import (
    DEFAULT_NODE_PORT,
    NodeSettings,
    RouterSettings,
)


@main.command()
@common_options
@click.option("--host", default=None, help="Address to bind  [default: 127.0.0.1]")
@click.option(
    "--port", type=int, default=None, help=f"Port (0 = any)  [default: {DEFAULT_NODE_PORT}]"
)
@click.option(
    "--allow-cpu",
    is_flag=True,
    default=None,
    help="Serve on the CPU when no GPU is found, or the engine cannot drive it",
)
@click.option(
    "--gpus",
    default=None,
    help="GPUs to serve on, by index or UUID, e.g. 0,2  [default: every visible one]",
)
@click.option(
    "--gpu-split/--no-gpu-split",
    default=None,
    help="Split a model over several GPUs when none holds it alone  [default: split]",
)
@click.option(
    "--gpu-overflow",
    type=click.Choice(["refuse", "partial"]),
    default=None,
    help="A model larger than the GPUs: refuse, or put part of it on the CPU  [default: refuse]",
)
@click.option(
    "--memory-budget",
    default=None,
    help="Model memory, e.g. 8GiB  [default: GPU memory, else 80% of RAM]",
)
@click.option(
    "--parallel", type=int, default=None, help="Slots per model (continuous batching)  [default: 4]"
)
@click.option(
    "--ctx-size", type=int, default=None, help="Context tokens per model  [default: 4096]"
)
@click.option(
    "--threads",
    type=int,
    default=None,
    help="CPU threads per model  [default: the CPUs this process may use: affinity, cgroup quota]",
)
@click.option(
    "--gpu-layers", type=int, default=None, help="Layers on the GPU, -1 = all  [default: -1]"
)
@click.option(
    "--prompt-cache-mib", type=int, default=None,
    help="Host memory per model for llama.cpp's prompt cache, 0 = off  [default: 512]",
)  # fmt: skip
@click.option(
    "--slot-choice", type=click.Choice(["cache", "similarity"]), default=None,
    help="A request's slot: cache (its best cached prompt restored) or similarity "
    "(llama.cpp's)  [default: cache]",
)  # fmt: skip
@click.option("--max-body-bytes", default=None, help="Largest request body  [default: 8MiB]")
@click.option("--router", default=None, help="Router URL to register with  [default: none]")
@click.option(
    "--token", "node_token", default=None, help="Router key of scope node (LLMLB_NODE_TOKEN)"
)
@click.option("--name", "node_name", default=None, help="Name in the fleet  [default: hostname]")
@click.option(
    "--advertise-url",
    default=None,
    help="URL the router reaches this node at  [default: bound address]",
)
@click.option(
    "--shared-models-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Read-only model folder used in place  [default: none]",
)
@click.option(
    "--origin-access/--no-origin-access",
    default=None,
    help="May download models from their origin (hub/URL)  [default: alone yes, in a fleet no]",
)
@click.option(
    "--origin-first",
    is_flag=True,
    default=None,
    help="In a fleet, try the origin before the router's copy",
)
@click.option(
    "--prune",
    is_flag=True,
    default=None,
    help="Delete unassigned, idle models when an assigned model needs their space",
)
@click.option(
    "--store-limit",
    default=None,
    help="Most the model store may hold, e.g. 200GiB  [default: the disk]",
)
@click.option(
    "--download-wait-seconds",
    type=float,
    default=None,
    help="How long a request waits for its model's download  [default: 600]",
)
@click.option(
    "--download-bandwidth", default=None, help="Download speed cap, e.g. 50MB  [default: none]"
)
def node(config: Path | None, **cli: Any) -> None:
    """Run a node: serve the models in the store through an OpenAI-compatible API."""
    settings = cli_settings(NodeSettings, cli, config)
    from llmlb.node.server import run_node

    serve_until_stopped(run_node(settings))


@main.command()
@common_options
@router_options
def serve(config: Path | None, **cli: Any) -> None:
    """Run the router: one OpenAI-compatible endpoint over the registered nodes."""
    settings = cli_settings(RouterSettings, cli, config)
    if settings.workers > 1:
        from llmlb.router.workers.supervisor import run_workers

        try:
            sys.exit(run_workers(settings))
        except LlmlbError as exc:  # (a port taken)
            fail(exc.message)
    from llmlb.router.server import run_router

    serve_until_stopped(run_router(settings))


@main.command()
@common_options
@router_options
@click.option("--node-port", type=int, default=DEFAULT_NODE_PORT, help="Port of the local node")
def up(config: Path | None, node_port: int, **cli: Any) -> None:
    """Run a router and one local node serving the small bundled model."""
    cli["allow_cpu_nodes"] = True if cli.get("allow_cpu_nodes") is None else cli["allow_cpu_nodes"]
    settings = cli_settings(RouterSettings, cli, config)
    if settings.workers > 1:
        fail("--workers is for llmlb serve: llmlb up runs the router and its node in one process")
    from llmlb.cli.up import run_up

    serve_until_stopped(run_up(settings, node_port))


@main.command()
@remote_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON")
def status(
    router: str | None, admin_password: str | None, api_key: str | None, as_json: bool
) -> None:
    """Router health, nodes and their models."""
    from llmlb.cli.local_admin import RemoteAdmin

    url = router_url(router)

    async def gather(admin: RemoteAdmin) -> dict[str, Any]:
        return {"router": url, "health": await admin.health(), "nodes": await admin.nodes()}

    report = with_admin(lambda: remote_admin(url, admin_password, api_key), gather)
    if as_json:
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    console_out = Console()
    console_out.print(f"router [bold]{url}[/bold]: {report['health']['status']} "
                      f"(version {report['health']['version']})")  # fmt: skip
    table = Table("id", "name", "status", "url", "engine", "loaded", "on disk",
                  "slots busy/total", "sync")  # fmt: skip
    for node in report["nodes"]:
        table.add_row(
            node["id"][:8], node["name"], node["status"], node["base_url"], engine_text(node),
            ", ".join(node["models_loaded"]), ", ".join(node["models_on_disk"]),
            f"{node['slots_busy']}/{node['slots_total']}", sync_text(node),
        )  # fmt: skip
    console_out.print(table)
    for warning in filter(None, map(engine_warnings, report["nodes"])):
        console_out.print(f"[yellow]{escape(warning)}[/yellow]")
