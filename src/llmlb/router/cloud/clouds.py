"""Calls to cloud providers: their keys, a concurrency cap each, retries, their model lists.

Only a model name with a provider's prefix (``openai:gpt-4o``) ever leaves for a cloud. A
provider's 429 or 5xx is tried again after its ``Retry-After`` (or a backoff) up to
``cloud_max_retries`` times; the calls in flight to one provider are capped at
``cloud_max_concurrency``, and those beyond it wait in a queue bounded like the nodes' one
(``queue_size``, ``queue_timeout``). Keys travel in headers only, never in a URL, and are
scrubbed from every message a provider sends back.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from llmlb.common.backoff import backoff
from llmlb.common.errors import (
    AuthenticationFailed,
    ModelNotSupported,
    RelayedError,
    UpstreamFailed,
    UpstreamTimeout,
    describe,
)
from llmlb.common.settings import RouterSettings
from llmlb.common.wire import read_limited
from llmlb.router.proxy.admission import WaitLine
from llmlb.translate.providers import PROVIDERS
from llmlb.translate.providers.base import Provider

log = logging.getLogger(__name__)

RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504, 529})
MODELS_TTL = 24 * 3600.0  # a provider's model list is asked for at most daily
MODELS_RETRY = 300.0  # after a failed listing
MODELS_TIMEOUT = 10.0
MAX_MODELS = 10_000  # per provider: they become metric labels
_MAX_ERROR_BODY = 64 * 1024


def prefix_of(model: str) -> str | None:
    """The provider prefix of a model name, if it has one we know."""
    name, colon, _ = model.partition(":")
    return name if colon and name in PROVIDERS else None


class Gate:
    """At most ``limit`` calls at once; the rest wait in order, in a bounded line
    (``router.proxy.admission``: the same bound and deadline as the nodes' queue)."""

    def __init__(self, name: str, limit: int, queue_size: int, queue_timeout: float) -> None:
        self.name = name
        self.limit = limit
        self.active = 0
        self._line = WaitLine(queue_size, queue_timeout)
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def enter(self) -> None:
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return
        place = self._line.join(f"{self.limit} requests to {self.name} are in flight and the "
                                "queue is full")  # fmt: skip
        turn = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            async with asyncio.timeout(place.remaining()):
                await asyncio.shield(turn)
        except TimeoutError:
            if not turn.done():
                self._waiters.remove(turn)
                raise place.timed_out(f"waited {self._line.timeout:.0f} s for a free slot to "
                                      f"{self.name}") from None  # fmt: skip
        except asyncio.CancelledError:
            if turn.done():
                self.leave()  # handed a slot just as the caller left: pass it on
            else:
                self._waiters.remove(turn)
            raise
        finally:
            place.leave()

    def leave(self) -> None:
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot passes to the next waiter
                return
        self.active -= 1


@dataclass
class CloudCall:
    """A provider's 200 answer, holding a slot of its provider's gate until closed."""

    provider: Provider
    response: aiohttp.ClientResponse
    attempts: int
    gate: Gate
    closed: bool = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.response.close()
            self.gate.leave()


@dataclass
class _ModelList:
    ids: list[str] = field(default_factory=list)
    fetched_at: float = 0.0
    retry_at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Clouds:
    def __init__(self, settings: RouterSettings, session: aiohttp.ClientSession) -> None:
        self._settings = settings
        self._session = session
        self._providers: dict[str, Provider] = {}
        for name, cls in PROVIDERS.items():
            key = getattr(settings, f"{name}_api_key")
            if key is not None and key.get_secret_value():
                base_url = getattr(settings, f"{name}_base_url")
                self._providers[name] = cls(key.get_secret_value(), base_url,
                                            settings.max_image_bytes)  # fmt: skip
        self._gates = {
            name: Gate(name, settings.cloud_max_concurrency, settings.queue_size,
                       settings.queue_timeout)
            for name in PROVIDERS
        }  # fmt: skip
        self._lists = {name: _ModelList() for name in self._providers}

    def provider(self, prefix: str) -> Provider:
        """The provider of ``prefix``; 401 naming the setting when it has no key."""
        provider = self._providers.get(prefix)
        if provider is None:
            setting = PROVIDERS[prefix].key_setting
            raise AuthenticationFailed(
                f"the router has no key for {prefix}: set {setting} (or {prefix}_api_key in "
                f"its config file) to use models named '{prefix}:...'",
                code="provider_not_configured",
            )
        return provider

    def configured(self) -> dict[str, bool]:
        """Which providers have a key (the dashboard shows it; never the key)."""
        return {name: name in self._providers for name in PROVIDERS}

    def knows(self, model: str) -> bool:
        """Whether ``model`` (prefixed) is in its provider's last model list."""
        prefix = prefix_of(model)
        return prefix in self._lists and model[len(prefix) + 1 :] in self._lists[prefix].ids

    def scrub(self, text: str) -> str:
        """``text`` without any provider key in it."""
        for provider in self._providers.values():
            text = text.replace(provider.api_key, "[key]")
        return text

    async def post(self, provider: Provider, path: str, payload: bytes) -> CloudCall:
        """The provider's 200 answer to a POST, after retries; RelayedError with the
        provider's status and message for an error answer; 502/504 when none came."""
        gate = self._gates[provider.name]
        await gate.enter()
        try:
            return await self._post(provider, path, payload, gate)
        except BaseException:
            gate.leave()
            raise

    async def _post(self, provider: Provider, path: str, payload: bytes, gate: Gate) -> CloudCall:
        url = provider.base_url + path
        headers = {**provider.headers(), "content-type": "application/json"}
        retries = self._settings.cloud_max_retries
        for attempt in range(1, retries + 2):
            try:
                async with asyncio.timeout(self._settings.request_timeout):
                    response = await self._session.post(url, data=payload, headers=headers)
                    if response.status == 200:
                        return CloudCall(provider, response, attempt, gate)
                    body, _ = await read_limited(response, _MAX_ERROR_BODY)
                    response.close()
            except TimeoutError:
                raise UpstreamTimeout(
                    f"{provider.name} did not answer within {self._settings.request_timeout:g} s"
                ) from None
            except aiohttp.ClientError as exc:
                if attempt > retries:
                    raise UpstreamFailed(f"{provider.name} failed: {self.scrub(describe(exc))}",
                                         code="provider_error") from None  # fmt: skip
                await asyncio.sleep(backoff(attempt, 0.5, 8.0))
                continue
            wait = _retry_after(response.headers.get("retry-after"), attempt)
            if (response.status in RETRIED_STATUSES and attempt <= retries
                    and wait <= self._settings.cloud_max_retry_wait):  # fmt: skip
                log.info("%s answered %d; trying again in %.1f s", provider.name,
                         response.status, wait)  # fmt: skip
                await asyncio.sleep(wait)
                continue
            raise self._error(provider, response.status, body, response.headers)
        raise AssertionError("unreachable")

    def _error(self, provider: Provider, status: int, body: bytes, headers: Any) -> RelayedError:
        message, kind = provider.error_of(body)
        extra = {"Retry-After": headers["retry-after"]} if "retry-after" in headers else {}
        error_type = {"rate_limit_error": "rate_limit_error", "RESOURCE_EXHAUSTED":
                      "rate_limit_error"}.get(kind or "")  # fmt: skip
        return RelayedError(
            f"{provider.name} answered {status}: {self.scrub(message)}", status=status,
            error_type=error_type, code="provider_error", headers=extra,
        )  # fmt: skip

    async def read_json(self, call: CloudCall) -> dict[str, Any]:
        """A whole answer's JSON (then the call is closed); 502 when it is not JSON."""
        limit = self._settings.max_buffered_answer
        try:
            async with asyncio.timeout(self._settings.request_timeout):
                raw, whole = await read_limited(call.response, limit)
            if not whole:
                raise UpstreamFailed(f"{call.provider.name} sent an answer larger than {limit} "
                                     "bytes", code="provider_error")  # fmt: skip
        except TimeoutError:
            raise UpstreamTimeout(f"{call.provider.name} stopped sending its answer") from None
        except aiohttp.ClientError as exc:
            raise UpstreamFailed(f"{call.provider.name} broke off its answer: "
                                 f"{self.scrub(describe(exc))}") from None  # fmt: skip
        finally:
            call.close()
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamFailed(
                f"{call.provider.name} sent an answer that is not JSON ({len(raw)} bytes)",
                code="provider_error",
            ) from None
        if not isinstance(data, dict):
            raise UpstreamFailed(f"{call.provider.name} sent an answer that is not an object")
        return data

    # -- model lists -----------------------------------------------------------------------

    async def model_list(self) -> list[dict[str, Any]]:
        """Every configured provider's models, prefixed; a provider that fails to list keeps
        its last list (or none) and does not hold up the others."""
        names = list(self._providers)
        lists = await asyncio.gather(*(self._models_of(n) for n in names))
        return [
            {"id": f"{name}:{model}", "object": "model", "created": 0, "owned_by": name}
            for name, ids in zip(names, lists, strict=True)
            for model in ids
        ]

    async def _models_of(self, name: str) -> list[str]:
        state = self._lists[name]
        now = time.monotonic()
        if (state.fetched_at and now - state.fetched_at < MODELS_TTL) or now < state.retry_at:
            return state.ids
        async with state.lock:
            if state.fetched_at and time.monotonic() - state.fetched_at < MODELS_TTL:
                return state.ids
            try:
                async with asyncio.timeout(MODELS_TIMEOUT):
                    state.ids = await self._fetch_models(name)
                state.fetched_at = time.monotonic()
            except Exception as exc:
                state.retry_at = time.monotonic() + MODELS_RETRY
                log.warning("listing %s's models failed: %s", name, self.scrub(describe(exc)))
        return state.ids

    async def _fetch_models(self, name: str) -> list[str]:
        provider = self._providers[name]
        ids: list[str] = []
        query: dict[str, str] | None = {}
        while query is not None and len(ids) < MAX_MODELS:
            async with self._session.get(
                provider.base_url + provider.models_path, params=query,
                headers=provider.headers(),
            ) as response:  # fmt: skip
                if response.status != 200:
                    message, _ = provider.error_of(
                        (await read_limited(response, _MAX_ERROR_BODY))[0]
                    )
                    raise UpstreamFailed(f"{response.status}: {message}")
                page = provider.model_page(await response.json(content_type=None))
            ids.extend(page.ids)
            query = page.next_query
        return sorted(set(ids))[:MAX_MODELS]


def _retry_after(value: str | None, attempt: int) -> float:
    """Seconds to wait: the provider's ``Retry-After`` (seconds or a date), else a backoff."""
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return backoff(attempt, 0.5, 8.0)
        return max(0.0, when.timestamp() - time.time())
    return backoff(attempt, 0.5, 8.0)


def not_a_provider(model: str, canonical: str) -> ModelNotSupported:
    """For a ``name:tag`` model that no node or catalog knows (as ``canonical``, the store
    name of an Ollama-style name) and whose prefix is no cloud provider either."""
    known = ", ".join(f"{p}:" for p in PROVIDERS)
    prefix = model.partition(":")[0]
    return ModelNotSupported(
        f"model {model!r} is not supported: no node holds it (as {canonical!r}), it is not in "
        f"the catalog, and {prefix + ':'!r} is not a cloud provider prefix (known: {known})",
        param="model",
    )  # fmt: skip
