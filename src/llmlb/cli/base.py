"""Shared pieces of the ``llmlb`` command: the group, option sets, settings, exits."""

from __future__ import annotations

import signal
import ssl
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, get_args

import click
from rich.console import Console

from llmlb.common.errors import LlmlbError
from llmlb.common.logs import configure_logging
from llmlb.common.serving import run_async
from llmlb.common.settings import (
    DEFAULT_ROUTER_PORT,
    ROUTER_URL_FILE,
    AutoDistribute,
    BalancerStrategy,
    CommonSettings,
    UnknownSetting,
    default_home,
    load_settings,
)
from llmlb.models.store import ModelStore

if TYPE_CHECKING:
    from llmlb.cli.local_admin import RemoteAdmin

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
console = Console(stderr=True)


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
        click.option("--tls-cert", type=click.Path(path_type=Path, dir_okay=False),
                     default=None, help="Serve HTTPS with this certificate (PEM)"),
        click.option("--tls-key", type=click.Path(path_type=Path, dir_okay=False),
                     default=None, help="The certificate's private key (PEM)"),
        click.option("--tls-ca", type=click.Path(path_type=Path, dir_okay=False), default=None,
                     help="CA bundle to verify the routers and nodes called  [default: system]"),
        click.option("--otlp-endpoint", default=None,
                     help="Send traces to this OTLP/HTTP collector (or OTEL_EXPORTER_OTLP_ENDPOINT)  [default: off]"),
    ]  # fmt: skip
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def router_url(given: str | None) -> str:
    """The router to talk to: ``--router``, else the one running from this home folder."""
    if given:
        return given.rstrip("/")
    path = default_home() / ROUTER_URL_FILE
    try:
        return path.read_text().strip()
    except OSError:
        fail(
            f"no running router found: {path} does not exist (a router writes it when it "
            "starts with this LLMLB_HOME); pass --router URL"
        )


def exit_quietly_on_sigterm() -> None:
    """uvicorn re-raises SIGTERM after its graceful shutdown; make that a clean exit (0)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def router_options(func: F) -> F:
    decorators = [
        click.option("--host", default=None, help="Address to bind  [default: 127.0.0.1]"),
        click.option("--port", type=int, default=None, help=f"Port (0 = any)  [default: {DEFAULT_ROUTER_PORT}]"),
        click.option("--ollama-port", type=int, default=None, help="Also listen here for Ollama's clients (Ollama's own: 11434)  [default: off]"),
        click.option("--workers", type=click.IntRange(1, 64), default=None, help="Router processes on the same ports and database, one core each  [default: 1]"),
        click.option("--database-url", default=None, help="SQLAlchemy URL  [default: SQLite $LLMLB_HOME/llmlb.db]"),
        click.option("--allow-cpu-nodes", is_flag=True, default=None, help="Accept nodes without a GPU"),
        click.option("--require-node-approval", is_flag=True, default=None, help="New nodes wait as pending until approved"),
        click.option("--no-auth", is_flag=True, default=None, help="Serve everyone without keys"),
        click.option("--balancer", type=click.Choice(get_args(BalancerStrategy)), default=None, help="Node choice  [default: load]"),
        click.option("--heartbeat-interval", type=float, default=None, help="Seconds between node heartbeats  [default: 10]"),
        click.option("--request-timeout", type=float, default=None, help="Seconds per proxied request  [default: 600]"),
        click.option("--log-bodies", is_flag=True, default=None, help="Keep request and response bodies in the history"),
        click.option("--access-log", is_flag=True, default=None, help="A log line per client request (logger llmlb.access; no bodies)"),
        click.option("--auto-distribute", type=click.Choice(get_args(AutoDistribute)), default=None, help="Models assigned to new nodes  [default: recommended]"),
    ]  # fmt: skip
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


TLS_CA = "llmlb.tls_ca"  # where --tls-ca waits in the click context for remote_admin()


def _remember_tls_ca(context: click.Context, _: click.Parameter, value: Path | None) -> None:
    context.meta[TLS_CA] = value


def remote_admin(url: str, password: str | None, api_key: str | None) -> RemoteAdmin:
    """An admin client for the router at ``url``, trusting the command's ``--tls-ca``."""
    from llmlb.cli.local_admin import RemoteAdmin

    context = click.get_current_context(silent=True)
    tls_ca = context.meta.get(TLS_CA) if context is not None else None
    try:
        return RemoteAdmin(url, password, api_key, tls_ca)
    except ssl.SSLError as exc:
        fail(f"--tls-ca {tls_ca}: not a PEM bundle of CA certificates ({exc})")


def remote_options(func: F) -> F:
    decorators = [
        click.option("--router", default=None, help="Router URL; without it, work on the local state"),
        click.option("--tls-ca", type=click.Path(path_type=Path, dir_okay=False, exists=True), envvar="LLMLB_TLS_CA", default=None, expose_value=False, callback=_remember_tls_ca, help="CA bundle to verify an HTTPS --router, added to the system's (LLMLB_TLS_CA)"),
        click.option("--admin-password", envvar="LLMLB_ADMIN_PASSWORD", default=None, help="Admin password (LLMLB_ADMIN_PASSWORD)"),
        click.option("--api-key", envvar="LLMLB_API_KEY", default=None, help="Admin API key (LLMLB_API_KEY)"),
    ]  # fmt: skip
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def serve_until_stopped(coro: Coroutine[Any, Any, None]) -> None:
    """Run a server until SIGINT/SIGTERM; its startup errors end the process with status 1."""
    exit_quietly_on_sigterm()
    try:
        run_async(coro)
    except LlmlbError as exc:
        fail(exc.message)
    except KeyboardInterrupt:
        pass


def with_admin(make: Callable[[], Any], call: Callable[[Any], Awaitable[T]]) -> T:
    """Open an admin client (local or remote), run ``call`` on it, close it; errors exit 1."""

    async def go() -> T:
        admin = make()
        try:
            return await call(admin)
        finally:
            await admin.close()

    try:
        return run_async(go())
    except LlmlbError as exc:
        fail(exc.message)
        raise  # unreachable: fail exits


def _print_version(ctx: click.Context) -> None:
    from llmlb.build_info import describe

    click.echo(describe())
    ctx.exit()


def fail(message: str) -> NoReturn:
    console.print(f"[red]error:[/red] {message}")
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=lambda ctx, _, shown: _print_version(ctx) if shown else None,
    help="Show the version and the commit, and exit.",
)
def main() -> None:
    """llmlb: one OpenAI-compatible endpoint in front of a fleet of local-LLM nodes."""


S = TypeVar("S", bound=CommonSettings)


def cli_settings(cls: type[S], cli: dict[str, Any], config: Path | None, quiet: bool = False) -> S:
    from pydantic import ValidationError

    try:
        settings = load_settings(cls, cli, config)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        fail(f"invalid settings: {problems}")
    except UnknownSetting as exc:
        fail(str(exc))
    if not quiet:
        configure_logging(settings.log_level, settings.log_format)
    return settings


def store_at(home: Path | None) -> ModelStore:
    return ModelStore((home or default_home()) / "models")


def engine_text(node: dict[str, Any]) -> str:
    """What a node's engine runs on, and its GPUs: ``cuda: 2 × NVIDIA H100``, ``cpu``."""
    engine = node.get("engine") or {}
    backend = engine.get("backend") or "?"
    gpus = [d["name"] for d in node.get("devices") or [] if d.get("kind") != "cpu"]
    shown = f"{backend}: {len(gpus)} × {gpus[0]}" if gpus and len(set(gpus)) == 1 else backend
    return shown + (" (GPU unused: see below)" if engine.get("warning") else "")


def engine_warnings(node: dict[str, Any]) -> str | None:
    """The node's engine warning, for under a table; None without one."""
    warning = (node.get("engine") or {}).get("warning")
    return f"{node['name']}: {warning}" if warning else None


def sync_text(node: dict[str, Any]) -> str:
    """A node's sync state in a few words: in sync, syncing N% (models), failed: why."""
    sync = node.get("sync") or {}
    state = sync.get("state", "in_sync")
    missing = ", ".join(sync.get("missing") or [])
    if state == "syncing":
        done, total = sync.get("bytes_done") or 0, sync.get("bytes_total") or 0
        share = f"{100 * done / total:.0f}% " if total else ""
        return f"syncing {share}({missing})"
    if state == "failed":
        return f"failed: {sync.get('error') or missing}"
    return "in sync"
