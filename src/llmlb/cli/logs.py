"""``llmlb log-level``: a running router's (or one of its nodes') logger levels, changed
without a restart (``common.logs``)."""

from __future__ import annotations

from typing import Any

import click

from llmlb.cli.base import main, remote_admin, remote_options, router_url, with_admin
from llmlb.common.logs import LEVELS


@main.command("log-level")
@click.argument("logger", required=False, default=None)
@click.argument("level", required=False, default=None,
                type=click.Choice([*LEVELS, "inherit"]))  # fmt: skip
@click.option("--node", "node_id", default=None, help="A node's id: change it there instead")
@remote_options
def log_level(logger: str | None, level: str | None, node_id: str | None, router: str | None,
              admin_password: str | None, api_key: str | None) -> None:  # fmt: skip
    """Show the running router's logger levels, or set LOGGER ('root' for the root) to
    LEVEL there, e.g. 'llmlb log-level llmlb.access info' turns the access log on."""
    if logger is not None and level is None:
        raise click.UsageError("give a LEVEL for the logger")
    url = router_url(router)

    async def call(admin: Any) -> Any:
        if logger is None:
            if node_id is not None:
                raise click.UsageError("--node needs a LOGGER and a LEVEL")
            return (await admin.call("GET", "/api/logs/levels"))["data"]
        path = f"/api/nodes/{node_id}/logs/levels" if node_id else "/api/logs/levels"
        body = {"logger": "" if logger == "root" else logger,
                "level": None if level == "inherit" else level}  # fmt: skip
        return (await admin.call("PUT", path, json=body))["data"]

    levels = with_admin(lambda: remote_admin(url, admin_password, api_key), call)
    for name, value in levels.items():
        click.echo(f"{name or 'root'}: {value}")
