"""``llmlb endpoints``: other OpenAI-compatible servers (vLLM, SGLang, llama-server, Ollama,
LM Studio, TGI, an llmlb node without a router) in the router's fleet."""

from __future__ import annotations

from typing import Any, get_args

import click
import orjson
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from llmlb.cli.base import fail, main, remote_options
from llmlb.cli.fleet import _run_admin
from llmlb.common.wire import DEFAULT_ENDPOINT_CONCURRENCY, EndpointKind, EndpointSpec


@main.group()
def endpoints() -> None:
    """Other OpenAI-compatible servers the router balances over beside its nodes."""


@endpoints.command("add")
@click.argument("url")
@click.option("--kind", type=click.Choice(get_args(EndpointKind)), default="openai",
              show_default=True, help="What serves there (vllm, ollama, ...: where it lists "
              "its models, which metrics give its load)")  # fmt: skip
@click.option("--name", default=None, help="Its name in the fleet  [default: host:port]")
@click.option("--key", envvar="LLMLB_ENDPOINT_KEY", default=None,
              help="Its API key (LLMLB_ENDPOINT_KEY); stored, never shown again")  # fmt: skip
@click.option("--model", "models", multiple=True,
              help="One of its models to serve, by its own id (repeat)  [default: all it lists]")  # fmt: skip
@click.option("--max-concurrency", type=int, default=DEFAULT_ENDPOINT_CONCURRENCY,
              show_default=True, help="Requests the router sends it at once")  # fmt: skip
@remote_options
def endpoints_add(url: str, kind: str, name: str | None, key: str | None,
                  models: tuple[str, ...], max_concurrency: int, router: str | None,
                  admin_password: str | None, api_key: str | None) -> None:  # fmt: skip
    """Add the server at URL (e.g. http://gpu7:8000/v1) to the fleet."""
    try:
        spec = EndpointSpec.model_validate({
            "url": url, "kind": kind, "name": name, "key": key, "models": list(models),
            "max_concurrency": max_concurrency,
        })  # fmt: skip
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"{'.'.join(map(str, first['loc']))}: {first['msg']}")
    added = _run_admin(router, admin_password, api_key, lambda a: a.add_endpoint(spec))
    served = ", ".join(added["models_loaded"]) or "none listed yet"
    click.echo(f"added endpoint {added['id']} ({added['name']}, {added['kind']}, "
               f"{added['status']}); models: {served}")  # fmt: skip


@endpoints.command("list")
@remote_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON")
def endpoints_list(
    router: str | None, admin_password: str | None, api_key: str | None, as_json: bool
) -> None:
    """List endpoints (never their keys)."""
    found = [n for n in _run_admin(router, admin_password, api_key, lambda a: a.nodes())
             if n.get("kind", "node") != "node"]  # fmt: skip
    if as_json:
        click.echo(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table("id", "name", "kind", "status", "url", "in flight", "models")
    for node in found:
        table.add_row(node["id"], node["name"], node["kind"], node["status"], node["base_url"],
                      _in_flight(node), ", ".join(node["models_loaded"]))  # fmt: skip
    Console().print(table)


@endpoints.command("remove")
@click.argument("endpoint_id")
@remote_options
def endpoints_remove(
    endpoint_id: str, router: str | None, admin_password: str | None, api_key: str | None
) -> None:
    """Take an endpoint out of the fleet (the server itself is not touched)."""
    _run_admin(router, admin_password, api_key, lambda a: a.remove_endpoint(endpoint_id))
    click.echo(f"removed: {endpoint_id}")


def _in_flight(node: dict[str, Any]) -> str:
    limit = (node.get("endpoint") or {}).get("max_concurrency", "?")
    return f"{node['router_in_flight']}/{limit}"
