"""``llmlb health``: the container's HEALTHCHECK. It asks this machine's router and node (the
ports of their settings) for ``/health``; a part whose port refuses is not running here, so
the image's one check fits ``serve``, ``node`` and ``up`` alike."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from pathlib import Path

import click

from llmlb.cli.base import cli_settings, fail, main
from llmlb.common.settings import CommonSettings, NodeSettings, RouterSettings

PROBE_SECONDS = 4.0


@main.command()
@click.option("--config", type=click.Path(path_type=Path), default=None, help="TOML settings")
def health(config: Path | None) -> None:
    """Exit 0 when the router or node running on this machine answers /health (containers)."""
    router = cli_settings(RouterSettings, {}, config, quiet=True)
    node = cli_settings(NodeSettings, {}, config, quiet=True)
    answers: dict[str, int | str] = {}
    for part, settings, port in (("router", router, router.port), ("node", node, node.port)):
        answer = _ask(settings, port)
        if answer is not None:
            answers[part] = answer
    if not answers:
        fail("neither a router nor a node answers on this machine")
    if any(answer != 200 for answer in answers.values()):
        fail("; ".join(f"{part}: {answer}" for part, answer in answers.items()))
    click.echo(", ".join(f"{part} ok" for part in answers))


def _ask(settings: CommonSettings, port: int) -> int | str | None:
    """The status of ``/health`` on loopback; None when nothing listens on the port."""
    scheme = "https" if settings.tls_cert else "http"
    # Loopback to our own process: its certificate names the address others use, not 127.0.0.1.
    context = ssl._create_unverified_context() if scheme == "https" else None
    try:
        with urllib.request.urlopen(
            f"{scheme}://127.0.0.1:{port}/health", timeout=PROBE_SECONDS, context=context
        ) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError):
            return None
        return str(exc.reason)
    except OSError as exc:  # a timeout, a reset
        return str(exc)
