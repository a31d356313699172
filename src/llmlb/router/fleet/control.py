"""The router's control calls to its nodes: one client, so that every one is made with the
node's own key, bounded, and its failures told the same way.

Clients' requests do not come here: they go over the router's own HTTP/1.1 pool
(``router.proxy.nodelink``). These are the operator's and the distributor's: ask a node to
pull a model and follow its download, take a model off it, read its logs or model list, and
probe a node that refused a connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from llmlb.common.errors import BadRequest, Conflict, Unavailable, UpstreamFailed
from llmlb.common.wire import error_message, read_limited
from llmlb.router.fleet.node_record import NodeRecord

# A node keeps at most 2,000 lines of at most 4,000 characters: what one answer can hold.
NODE_ANSWER_MAX_BYTES = 12 * 1024 * 1024
QUERY_SECONDS = 5.0  # a node's logs or model list
PROBE_SECONDS = 1.0


class NodeUnreached(UpstreamFailed):
    """The node could not be reached, or did not answer in time."""


@dataclass
class NodeControl:
    """``session`` keeps connections to nodes; ``probes`` makes a new one each time (a probe
    asks whether a node takes connections again, which a pooled one cannot tell)."""

    session: aiohttp.ClientSession
    probes: aiohttp.ClientSession

    async def pull(self, node: NodeRecord, model: str) -> None:
        """Ask the node to fetch ``model`` and keep it (its ``/api/pull``)."""
        try:
            body = {"model": model, "assign": True}
            url = f"{node.base_url}/api/pull"
            async with self.session.post(url, headers=node.auth_headers(), json=body) as response:
                if response.status not in (200, 202):
                    raise UpstreamFailed(f"node {node.name} refused the pull: "
                                         f"{await _message(response)}")  # fmt: skip
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NodeUnreached(f"node {node.name} unreachable: {exc}") from exc

    async def download(self, node: NodeRecord, model: str) -> dict[str, Any] | None:
        """The node's progress on ``model``'s download; None when it has none (it
        restarted, and must be asked again)."""
        try:
            url = f"{node.base_url}/api/downloads/{model}"
            async with self.session.get(url, headers=node.auth_headers()) as response:
                if response.status == 404:
                    return None
                if response.status != 200:
                    raise UpstreamFailed(await _message(response))
                progress: dict[str, Any] = await response.json()
                return progress
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NodeUnreached(f"node {node.name} unreachable: {exc}") from exc

    async def remove_model(self, node: NodeRecord, model: str) -> None:
        """Delete ``model`` from the node's disk (one it never had is gone already)."""
        try:
            url = f"{node.base_url}/api/models/{model}"
            async with self.session.delete(url, headers=node.auth_headers()) as response:
                if response.status == 409:
                    raise Conflict(
                        f"node {node.name} is serving {model!r} right now; it is "
                        "no longer assigned there: try the removal again later"
                    )
                if response.status not in (200, 204, 404):
                    raise UpstreamFailed(f"node {node.name} answered {response.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NodeUnreached(
                f"node {node.name} is unreachable ({type(exc).__name__}); {model!r} is no longer "
                "assigned there, and its file stays until the removal is tried again"
            ) from exc

    async def listing(self, node: NodeRecord, path: str, what: str,
                      params: dict[str, str]) -> list[Any]:  # fmt: skip
        """A node's ``{"data": [...]}`` answer (its logs, its models): bounded, JSON, or a
        503 saying why not."""
        try:
            async with self.session.get(
                node.base_url + path, params=params, headers=node.auth_headers(),
                timeout=aiohttp.ClientTimeout(total=QUERY_SECONDS),
            ) as response:  # fmt: skip
                if response.status != 200:
                    raise Unavailable(f"node {node.name} answered {response.status} for its {what}")
                body, whole = await read_limited(response, NODE_ANSWER_MAX_BYTES)
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = type(exc).__name__
            raise Unavailable(f"node {node.name} did not give its {what}: {reason}") from exc
        try:
            data = orjson.loads(body)["data"] if whole else None
        except (orjson.JSONDecodeError, TypeError, KeyError):
            data = None
        if not isinstance(data, list):
            raise Unavailable(f"node {node.name} gave no readable {what}")
        return data

    async def set_log_level(self, node: NodeRecord, name: str,
                            level: str | None) -> dict[str, Any]:  # fmt: skip
        """Change a logger's level on the node; its levels after. The node's 400 (no such
        logger, a level it refuses) is passed on as the router's."""
        body = {"logger": name, "level": level}
        try:
            async with self.session.put(
                node.base_url + "/api/logs/levels", json=body, headers=node.auth_headers(),
                timeout=aiohttp.ClientTimeout(total=QUERY_SECONDS),
            ) as response:  # fmt: skip
                answer, whole = await read_limited(response, NODE_ANSWER_MAX_BYTES)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable(f"node {node.name} did not answer: {type(exc).__name__}") from exc
        try:
            data = orjson.loads(answer) if whole else None
        except orjson.JSONDecodeError:
            data = None
        if status == 400 and isinstance(data, dict) and isinstance(data.get("error"), dict):
            raise BadRequest(str(data["error"].get("message"))[:300], param="logger")
        levels = data.get("data") if isinstance(data, dict) else None
        if status != 200 or not isinstance(levels, dict):
            raise Unavailable(f"node {node.name} answered {status} for its log levels")
        return levels

    async def fetch(self, node: NodeRecord, path: str, limit: int) -> tuple[int, bytes]:
        """``GET path`` with the node's key, within ``QUERY_SECONDS``: (status, at most
        ``limit`` bytes of the body; b"" when there were more). Raises NodeUnreached."""
        try:
            async with self.session.get(
                node.base_url + path, headers=node.auth_headers(),
                timeout=aiohttp.ClientTimeout(total=QUERY_SECONDS),
            ) as response:  # fmt: skip
                body, whole = await read_limited(response, limit)
                return response.status, body if whole else b""
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NodeUnreached(f"no answer to GET {path}: {type(exc).__name__}") from exc

    async def probe(self, node: NodeRecord, path: str = "/health") -> bool:
        """Whether the node answers ``GET path`` on a new connection, within a second."""
        try:
            async with self.probes.get(
                node.base_url + path, headers=node.auth_headers(),
                timeout=aiohttp.ClientTimeout(total=PROBE_SECONDS),
            ) as response:  # fmt: skip
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False


async def _message(response: aiohttp.ClientResponse) -> str:
    return f"{response.status} {error_message(await response.read())}"
