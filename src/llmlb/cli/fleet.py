"""``llmlb nodes`` and ``llmlb keys``: managing the router's nodes and API keys."""

from __future__ import annotations

import time
from typing import Any

import click
import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from llmlb.cli.base import (
    cli_settings,
    console,
    engine_text,
    engine_warnings,
    main,
    remote_admin,
    remote_options,
    sync_text,
    with_admin,
)
from llmlb.common.settings import (
    RouterSettings,
)


@main.group()
def nodes() -> None:
    """List and manage the router's nodes."""


def _admin(router: str | None, admin_password: str | None, api_key: str | None) -> Any:
    from llmlb.cli.local_admin import LocalAdmin

    if router:
        return remote_admin(router, admin_password, api_key)
    return LocalAdmin(cli_settings(RouterSettings, {}, None, quiet=True))


def _run_admin(router: str | None, password: str | None, key: str | None, call: Any) -> Any:
    return with_admin(lambda: _admin(router, password, key), call)


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
    table = Table("id", "name", "kind", "status", "url", "engine", "models", "sync")
    for node in found:
        models_text = ", ".join(sorted({*node["models_loaded"], *node["models_on_disk"]}))
        table.add_row(node["id"], node["name"], node.get("kind", "node"), node["status"],
                      node["base_url"],
                      engine_text(node), models_text, sync_text(node))  # fmt: skip
    console = Console()
    console.print(table)
    for warning in filter(None, map(engine_warnings, found)):
        console.print(f"[yellow]{escape(warning)}[/yellow]")


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
@click.option("--rpm", type=int, default=None, help="Requests per minute  [default: no limit]")
@click.option("--tpm", type=int, default=None, help="Tokens per minute  [default: no limit]")
@click.option(
    "--model", "models", multiple=True, help="A model it may use (repeat)  [default: any]"
)
@remote_options
def keys_create(name: str, scopes: tuple[str, ...], expires_in_days: float | None,
                rpm: int | None, tpm: int | None, models: tuple[str, ...],
                router: str | None, admin_password: str | None, api_key: str | None) -> None:  # fmt: skip
    """Create a key; its secret is printed once."""
    expires = time.time() + expires_in_days * 86400 if expires_in_days else None
    limits = {"requests_per_minute": rpm, "tokens_per_minute": tpm,
              "models": list(models) or None}  # fmt: skip
    key = _run_admin(router, admin_password, api_key,
                     lambda a: a.create_key(name, list(scopes), expires, limits))  # fmt: skip
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
