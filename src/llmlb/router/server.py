"""``llmlb serve``: open the state, build the app, serve."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from llmlb.common.serving import bind, serve
from llmlb.common.settings import RouterSettings
from llmlb.router.app import create_app
from llmlb.router.service import RouterService

log = logging.getLogger(__name__)


async def run_router(
    settings: RouterSettings,
    on_started: Callable[[str, RouterService], Awaitable[None] | None] | None = None,
) -> None:
    service = await RouterService.open(settings)
    app = create_app(service)
    sock = bind(settings.host, settings.port)

    async def announce(url: str) -> None:
        print(f"llmlb router listening on {url}", flush=True)
        if on_started is not None:
            result = on_started(url, service)
            if result is not None:
                await result

    await serve(app, sock, settings.shutdown_grace_seconds, announce)
