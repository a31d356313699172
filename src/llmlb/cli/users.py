"""``llmlb users``: the dashboard's accounts (roles: admin, viewer)."""

from __future__ import annotations

import sys
import time

import click
import orjson
from rich.console import Console
from rich.table import Table

from llmlb.cli.base import console, fail, main, remote_options
from llmlb.cli.fleet import _run_admin


@main.group()
def users() -> None:
    """Dashboard accounts. Without --router they are changed in this host's database."""


def _password(password_stdin: bool, prompt: str) -> str:
    """A password from stdin (one line, for scripts) or typed twice at a hidden prompt."""
    if password_stdin:
        line = sys.stdin.readline().rstrip("\n")
        if not line:
            fail("no password on stdin")
        return line
    value: str = click.prompt(prompt, hide_input=True, confirmation_prompt=True)
    return value


@users.command("create")
@click.argument("username")
@click.option(
    "--role", type=click.Choice(["admin", "viewer"]), default="viewer", help="What the user may do"
)
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from stdin instead of a prompt"
)
@remote_options
def users_create(username: str, role: str, password_stdin: bool, router: str | None,
                 admin_password: str | None, api_key: str | None) -> None:  # fmt: skip
    """Create a user (the first admin of a fresh router, or another one)."""
    password = _password(password_stdin, "Password")
    _run_admin(router, admin_password, api_key,
               lambda a: a.create_user(username, password, role))  # fmt: skip
    console.print(f"created user [bold]{username}[/bold] ({role})")


@users.command("list")
@remote_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON")
def users_list(
    router: str | None, admin_password: str | None, api_key: str | None, as_json: bool
) -> None:
    """List users (never their passwords)."""
    found = _run_admin(router, admin_password, api_key, lambda a: a.users())
    if as_json:
        click.echo(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table("user", "role", "created", "password changed")
    for user in found:
        table.add_row(user["username"], user["role"], _when(user["created_at"]),
                      _when(user["password_changed_at"]))  # fmt: skip
    Console().print(table)


@users.command("passwd")
@click.argument("username")
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from stdin instead of a prompt"
)
@remote_options
def users_passwd(username: str, password_stdin: bool, router: str | None,
                 admin_password: str | None, api_key: str | None) -> None:  # fmt: skip
    """Set a user's password; the user's sessions end."""
    password = _password(password_stdin, "New password")
    _run_admin(router, admin_password, api_key,
               lambda a: a.update_user(username, password=password))  # fmt: skip
    console.print(f"password of {username} changed; their sessions are logged out")


@users.command("role")
@click.argument("username")
@click.argument("role", type=click.Choice(["admin", "viewer"]))
@remote_options
def users_role(username: str, role: str, router: str | None, admin_password: str | None,
               api_key: str | None) -> None:  # fmt: skip
    """Make a user admin or viewer."""
    _run_admin(router, admin_password, api_key, lambda a: a.update_user(username, role=role))
    console.print(f"{username} is now {role}")


@users.command("delete")
@click.argument("username")
@remote_options
def users_delete(username: str, router: str | None, admin_password: str | None,
                 api_key: str | None) -> None:  # fmt: skip
    """Delete a user (never the last admin)."""
    _run_admin(router, admin_password, api_key, lambda a: a.delete_user(username))
    console.print(f"deleted {username}")


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"
