"""``llmlb models register|registered|edit|unregister``: models from Hugging Face in the
router's catalog (router.distribution.registrations), through a running router."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click
import orjson
from rich.console import Console
from rich.table import Table

from llmlb.cli.base import console, fail, remote_admin, remote_options, router_url, with_admin
from llmlb.cli.models import models
from llmlb.common.settings import parse_size


def _call(router: str | None, password: str | None, key: str | None, method: str, path: str,
          **kwargs: Any) -> Any:  # fmt: skip
    url = router_url(router)
    return with_admin(lambda: remote_admin(url, password, key),
                      lambda admin: admin.call(method, path, **kwargs))  # fmt: skip


@models.command("register")
@click.argument("reference")
@click.option("--name", default=None, help="Its name in the fleet  [default: from the file]")
@click.option("--alias", "aliases", multiple=True, help="Another name clients may use (repeat)")
@remote_options
def models_register(reference: str, name: str | None, aliases: tuple[str, ...],
                    router: str | None, admin_password: str | None, api_key: str | None) -> None:  # fmt: skip
    """Add a GGUF from Hugging Face to the catalog: hf.co/ORG/REPO[:QUANT], a
    https://huggingface.co/... link, or ORG/REPO/FILE.gguf."""
    body = {"model": reference, "name": name, "aliases": list(aliases)}
    entry = _call(router, admin_password, api_key, "POST", "/api/models/register", json=body)
    size = entry.get("size_bytes", 0) / 2**30
    parts = f", {len(entry['parts'])} parts" if entry.get("parts") else ""
    click.echo(f"registered {entry['name']}: {entry['origin']['hub']['file']} ({entry['chosen']};"
               f" {size:.2f} GiB{parts}; {', '.join(entry['capabilities'])})")  # fmt: skip
    console.print(f"distribute it with: llmlb models distribute {entry['name']}")


@models.command("registered")
@click.option("--json", "as_json", is_flag=True, help="Print JSON")
@remote_options
def models_registered(as_json: bool, router: str | None, admin_password: str | None,
                      api_key: str | None) -> None:  # fmt: skip
    """List the models registered from Hugging Face."""
    rows = _call(router, admin_password, api_key, "GET", "/api/models/registered")["data"]
    if as_json:
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table("name", "from", "size", "aliases", "tier", "by")
    for row in rows:
        hub = row["origin"]["hub"]
        tier = row.get("tier_min_gpu_memory_bytes")
        table.add_row(row["name"], f"{hub['repo']}/{hub['file']}",
                      f"{row.get('size_bytes', 0) / 2**30:.2f} GiB", ", ".join(row["aliases"]),
                      f"{tier / 2**30:.0f} GiB" if tier else "", row.get("registered_by") or "")  # fmt: skip
    Console().print(table)


@models.command("edit")
@click.argument("name")
@click.option("--alias", "aliases", multiple=True, help="Its aliases, all of them (repeat)")
@click.option("--description", default=None)
@click.option("--tier", default=None,
              help="Assign it to nodes with this much free GPU memory (e.g. 16GiB; 'none')")  # fmt: skip
@remote_options
def models_edit(name: str, aliases: tuple[str, ...], description: str | None, tier: str | None,
                router: str | None, admin_password: str | None, api_key: str | None) -> None:  # fmt: skip
    """Change a registered model's aliases, description or tier."""
    changes: dict[str, Any] = {}
    if aliases:
        changes["aliases"] = list(aliases)
    if description is not None:
        changes["description"] = description
    if tier is not None:
        try:
            changes["tier_min_gpu_memory_bytes"] = None if tier == "none" else parse_size(tier)
        except ValueError as exc:
            fail(f"--tier: {exc}")
    entry = _call(router, admin_password, api_key, "PATCH",
                  f"/api/models/registered/{quote(name, safe='')}", json=changes)  # fmt: skip
    click.echo(f"{entry['name']}: aliases {', '.join(entry['aliases']) or 'none'}")


@models.command("unregister")
@click.argument("name")
@remote_options
def models_unregister(name: str, router: str | None, admin_password: str | None,
                      api_key: str | None) -> None:  # fmt: skip
    """Take a registered model out of the catalog (nodes keep their copies)."""
    _call(router, admin_password, api_key, "DELETE",
          f"/api/models/registered/{quote(name, safe='')}")  # fmt: skip
    click.echo(f"unregistered {name}")
