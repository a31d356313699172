"""The node's link to its router: register, heartbeat, re-register when the router forgets it.

The node keeps serving whatever happens to the router; the link retries with backoff and
registers again (keeping its id: the router keys nodes by name + URL) after a router restart
or a heartbeat the router does not recognise (404).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any

import httpx
import psutil

from llmlb import __version__
from llmlb.common.backoff import backoff
from llmlb.common.names import is_model_name
from llmlb.common.wire import NodeLoad, RegisterRequest, error_message
from llmlb.node.gpu import NvidiaMeter
from llmlb.node.service import NodeService

log = logging.getLogger(__name__)
# Longer than any heartbeat interval; the router's idle timeout (30 s) closes it if it must.
KEEPALIVE_SECONDS = 120.0


class RouterLink:
    def __init__(
        self,
        service: NodeService,
        router_url: str,
        token: str | None,
        name: str,
        public_url: str,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,  # the router's certificate (serving.client_tls)
    ) -> None:
        self._verify = verify
        self._service = service
        self._router = router_url.rstrip("/")
        self._headers = {"authorization": f"Bearer {token}"} if token else {}
        self._name = name
        self._public_url = public_url
        self._transport = transport  # tests put a scripted router here
        self._gpu_meter = NvidiaMeter([d.uuid for d in service.devices if d.kind == "cuda"])
        self.node_id: str | None = None
        self.interval = 10.0
        self.last_contact: float | None = None  # time of the last exchange the router accepted
        self.last_error: str | None = None  # why the last exchange failed; None after a good one

    def status(self) -> dict[str, Any]:
        """For ``/health``: whether the router hears this node."""
        return {
            "url": self._router,
            "node_id": self.node_id,
            "connected": self.last_error is None and self.last_contact is not None,
            "last_contact": self.last_contact,
            "error": self.last_error,
        }

    def load(self) -> NodeLoad:
        service = self._service
        engines = [e for e in service.pool.loaded().values() if e.spec.purpose == "generate"]
        gpu_percent, gpu_free = self._gpu_use()
        local = service.resolver.all_local()
        return NodeLoad(
            state=service.reported_state(),
            models_loaded=sorted({e.spec.name for e in engines}),
            models_on_disk=[m.name for m in local],
            models_seeing=[m.name for m in local if m.projector is not None],
            downloads=service.resolver.active_progress(),
            sync=service.sync.state(),
            active_requests=sum(e.busy for e in engines),
            queued_requests=sum(e.waiting for e in engines),
            requests_in_flight=service.requests_in_flight,
            slots_busy=sum(e.busy for e in engines),
            slots_total=sum(e.spec.parallel for e in engines),
            slots_per_model=service.settings.parallel,
            ctx_size=service.settings.ctx_size,
            load_seconds=service.model_load_seconds(),
            request_seconds=round(service.recent_request_seconds(), 3),
            tokens_per_second=service.recent_tokens_per_second(),
            prompt_tokens_per_second=round(service.metrics.prompt_tokens_per_second, 1),
            cpu_percent=psutil.cpu_percent(None),
            ram_percent=psutil.virtual_memory().percent,
            gpu_percent=gpu_percent,
            gpu_free=gpu_free,
            engine=service.engine,
        )

    def _gpu_use(self) -> tuple[float, list[int]]:
        """(busy percentage, free bytes per reported GPU), sampled now."""
        if any(d.kind == "cuda" for d in self._service.devices):
            return self._gpu_meter.sample()
        return 0.0, []

    def _registration(self) -> dict[str, Any]:
        request = RegisterRequest(
            name=self._name,
            base_url=self._public_url,
            version=__version__,
            devices=self._service.devices,
            load=self.load(),
        )
        return request.model_dump()

    async def run(self) -> None:
        """Register, then heartbeat forever. Survives every error: log, back off, retry."""
        failures = 0
        # One connection for the node's life: httpx drops an idle one after 5 s by default,
        # which would make every heartbeat (10 s apart) a new TCP connection to the router.
        limits = httpx.Limits(max_connections=4, keepalive_expiry=KEEPALIVE_SECONDS)
        async with httpx.AsyncClient(
            timeout=10.0, headers=self._headers, transport=self._transport, limits=limits,
            verify=self._verify,
        ) as client:  # fmt: skip
            while True:
                try:
                    if self.node_id is None:
                        await self._register(client)
                    await self._heartbeat(client)
                except httpx.TransportError as exc:
                    # The reason matters when it is TLS (an untrusted certificate).
                    detail = f": {str(exc)[:200]}" if "SSL" in str(exc) else ""
                    reason = f"router unreachable ({type(exc).__name__}{detail})"
                    level = logging.WARNING
                except _Refused as exc:
                    reason, level = f"router refused this node: {exc}", logging.ERROR
                except Exception as exc:  # a broken answer, a bug: the link must not die
                    log.exception("router link failed")
                    reason, level = f"{type(exc).__name__}: {exc}", logging.WARNING
                else:
                    self.last_contact, self.last_error = time.time(), None
                    failures = 0
                    await asyncio.sleep(self.interval)
                    continue
                failures += 1
                wait = backoff(failures, 1.0, max(self.interval, 5.0))
                self._failed(reason, wait, level)
                await asyncio.sleep(wait)

    def _failed(self, reason: str, retry_in: float, level: int = logging.WARNING) -> None:
        self.last_error = reason
        log.log(level, "%s; retrying in %.0f s", reason, retry_in)

    async def _register(self, client: httpx.AsyncClient) -> None:
        response = await client.post(self._router + "/api/nodes", json=self._registration())
        if response.status_code != 201:
            raise _Refused(f"{response.status_code} {error_message(response.content)}")
        answer = response.json()
        self.node_id = answer["node_id"]
        self.interval = float(answer["heartbeat_interval"])
        log.info("registered with router %s as node %s (%s)",
                 self._router, self.node_id, answer["status"])  # fmt: skip
        await self._service.sync.update(_assigned(answer), self._router)

    async def _heartbeat(self, client: httpx.AsyncClient) -> None:
        url = f"{self._router}/api/nodes/{self.node_id}/heartbeat"
        response = await client.post(url, json=self.load().model_dump())
        if response.status_code == 404:
            log.info("router does not know node %s; registering again", self.node_id)
            self.node_id = None
            await self._register(client)
        elif response.status_code != 200:
            raise _Refused(f"{response.status_code} {error_message(response.content)}")
        else:
            await self._service.sync.update(_assigned(response.json()), self._router)

    async def goodbye(self) -> None:
        """Tell the router we are draining, so it sends nothing new while we finish."""
        self._gpu_meter.close()
        await self.report()

    async def report(self) -> None:
        """One heartbeat now, outside the link's rhythm (a state change); lost if the router
        does not answer within 2 s (the next heartbeat says it again)."""
        if self.node_id is None:
            return
        try:
            async with httpx.AsyncClient(
                timeout=2.0, headers=self._headers, verify=self._verify, transport=self._transport
            ) as client:
                await client.post(
                    f"{self._router}/api/nodes/{self.node_id}/heartbeat",
                    json=self.load().model_dump(),
                )
        except httpx.HTTPError:
            pass


class _Refused(Exception):
    pass


def _assigned(answer: Any) -> list[str]:
    """The router's assigned list from its answer (an older router sends none)."""
    models = answer.get("assigned_models") if isinstance(answer, dict) else None
    if not isinstance(models, list):
        return []
    return [m for m in models if isinstance(m, str) and is_model_name(m)]
