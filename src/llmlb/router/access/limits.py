"""Per-key limits on the client API: requests and tokens per minute, and allowed models.

Signed-in users (the dashboard's playground, basic auth) are limited the same way, by their
role's limits from the settings (``viewer_limits``, ``admin_limits``), each user with
buckets of their own; a role may also be kept from cloud models (``Allowance.cloud``).

Each limit is a token bucket that holds a minute's allowance and refills continuously, so a
key may burst up to its limit and then goes at the limit's pace. A request takes one from
the request bucket before it is forwarded; the tokens it used (prompt and output, as the
history records them) are taken from the token bucket when it ends, which may run the
bucket below zero: the key's next request then waits until it refills. Refusals are 429
``rate_limit_exceeded`` with ``Retry-After``, in OpenAI's shape.

A request's tokens are estimated when it is let in (a token per 4 bytes of its body) and
taken from the bucket at once, then settled against what it really used when it ends: so
neither a burst of concurrent requests nor a client that leaves before the usage is
reported gets past the allowance.

The buckets live in each router's memory, and routers sharing a database share what keys
use (router.access.sharing): every second each router writes what it took and takes what the
others did from its own buckets. So over a minute a key gets its allowance once, whichever
routers it calls; a burst within one sharing round may pass it on each router. A router's
worker processes (``--workers``) share it at each request instead, on their board
(router.workers.board): a burst gets no more through two workers than through one.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from llmlb.common.errors import PermissionDenied, RateLimited
from llmlb.common.settings import RoleLimits
from llmlb.router.access.auth import Principal
from llmlb.router.access.keys import ApiKey, KeyLimits, with_resolved_models
from llmlb.router.cloud.clouds import prefix_of
from llmlb.router.workers.board import Board


@dataclass(frozen=True)
class Allowance:
    """What one caller may ask of the client API, and whose buckets its use counts in."""

    subject: str  # a key's id, or a user's
    limits: KeyLimits
    cloud: bool = True  # may use provider models (those in ``limits.models``, where set)
    holder: str = "this key"  # as refusals name it

    @classmethod
    def of_key(cls, key: ApiKey) -> Allowance:
        return cls(key.id, key.limits)

    @property
    def checked(self) -> bool:
        """Whether a request needs checking at all (most callers have no limits)."""
        return self.limits.any or not self.cloud


class Allowances:
    """Each caller's allowance: its key's limits, its role's for a signed-in user."""

    def __init__(self, roles: dict[str, RoleLimits], resolve: Callable[[str], str]) -> None:
        # Models in a role's limits that are no model's names stop the start.
        self._roles = {
            role: (with_resolved_models(KeyLimits(**limits.model_dump(exclude={"cloud"})),
                                        resolve), limits.cloud)
            for role, limits in roles.items()
        }  # fmt: skip

    def of(self, principal: Principal) -> Allowance | None:
        """What a caller may ask of the client API; None for a caller nothing limits."""
        if principal.key is not None:
            return Allowance.of_key(principal.key)
        user = principal.user
        if user is None:
            return None
        limits, cloud = self._roles[user.role]
        return Allowance(user.id, limits, cloud, f"user {user.username!r} (role {user.role})")


@dataclass
class Bucket:
    per_minute: float
    level: float = field(init=False)
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.level = self.per_minute

    def _refill(self, now: float) -> None:
        rate = self.per_minute / 60.0
        self.level = min(self.per_minute, self.level + (now - self.updated) * rate)
        self.updated = now

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` is there (0: it is)."""
        self._refill(now)
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing / (self.per_minute / 60.0)

    def take(self, amount: float, now: float) -> None:
        self._refill(now)
        self.level -= amount

    def give(self, amount: float, now: float) -> None:
        self._refill(now)
        self.level = min(self.per_minute, self.level + amount)


BYTES_PER_TOKEN = 4  # the estimate of a request's prompt before it runs
MAX_PENDING = 100_000  # estimates awaiting their request's end (oldest dropped beyond)


class KeyLimiter:
    def __init__(self) -> None:
        self._requests: dict[str, Bucket] = {}
        self._tokens: dict[str, Bucket] = {}
        self._estimates: dict[str, tuple[str, int]] = {}  # request id -> (key id, tokens)
        # What this process took from limited keys since it started (key id -> requests,
        # tokens; tokens net of estimates given back), and the keys changed since shared.
        self.used: dict[str, list[int]] = {}
        self.unshared: set[str] = set()
        # Other routers' use of keys that have no bucket here yet (the last minute of it):
        # a bucket made later starts without it.
        self._others: dict[str, deque[tuple[float, int, int]]] = {}
        # With worker processes: what the others let each key use, at each request.
        self.board: Board | None = None

    def _count(self, key_id: str, requests: int, tokens: int) -> None:
        counts = self.used.setdefault(key_id, [0, 0])
        counts[0] += requests
        counts[1] += tokens
        self.unshared.add(key_id)
        if self.board is not None:
            self.board.publish_used(key_id, counts[0], counts[1])

    def take_workers_use(self) -> None:
        """With worker processes: what the others let every key use since the last look
        (router.access.sharing's round, each second), so that a key's use counts within the
        minute it happened, even here where its client may not come."""
        if self.board is not None:
            for subject, requests, tokens in self.board.used_elsewhere_by_all():
                self.others_used(subject, requests, tokens)

    def others_used(self, key_id: str, requests: int, tokens: int) -> None:
        """Another router's use of a key (read from the database), taken from its buckets,
        at most a minute's allowance at once (a router's whole count, should its row ever
        look new again, must not shut the key out for hours)."""
        now = time.monotonic()
        request_bucket, token_bucket = self._requests.get(key_id), self._tokens.get(key_id)
        if request_bucket is None and token_bucket is None:
            recent = self._others.setdefault(key_id, deque())
            recent.append((now, requests, tokens))
            while recent and now - recent[0][0] > 60:
                recent.popleft()
            return
        for bucket, amount in ((request_bucket, requests), (token_bucket, tokens)):
            if bucket is not None and amount > 0:
                bucket.take(min(amount, bucket.per_minute), now)
            elif bucket is not None and amount < 0:
                bucket.give(-amount, now)

    def admit(
        self, caller: ApiKey | Allowance, model: str | None, request_id: str = "",
        body_bytes: int = 0,
    ) -> None:  # fmt: skip
        """Raise unless ``caller`` may send a request for ``model`` now; count it."""
        allowance = caller if isinstance(caller, Allowance) else Allowance.of_key(caller)
        limits, subject, holder = allowance.limits, allowance.subject, allowance.holder
        listed = limits.models is not None and model in limits.models
        if limits.models is not None and not listed:
            shown = repr(model) if model is not None else "a model"
            raise PermissionDenied(
                f"{holder} may not use {shown}; it may use {', '.join(limits.models)}",
                param="model", code="model_not_allowed",
            )  # fmt: skip
        if not allowance.cloud and not listed and model is not None and prefix_of(model):
            raise PermissionDenied(
                f"{holder} may not use cloud models such as {model!r}",
                param="model", code="model_not_allowed",
            )  # fmt: skip
        if self.board is not None:  # (before the buckets: a new one starts without it)
            by_others = self.board.used_elsewhere(subject)
            if by_others != (0, 0):
                self.others_used(subject, *by_others)
        now = time.monotonic()
        requests = self._bucket(self._requests, subject, limits.requests_per_minute)
        tokens = self._bucket(self._tokens, subject, limits.tokens_per_minute)
        if tokens is not None:
            wait = tokens.wait_for(1, now)  # any allowance left
            if wait:
                raise _refused(holder, "tokens", limits.tokens_per_minute, wait)
        if requests is not None:
            wait = requests.wait_for(1, now)
            if wait:
                raise _refused(holder, "requests", limits.requests_per_minute, wait)
            requests.take(1, now)
            self._count(subject, 1, 0)
        if tokens is not None and request_id:
            estimate = max(1, body_bytes // BYTES_PER_TOKEN)
            tokens.take(estimate, now)
            self._count(subject, 0, estimate)
            self._estimates[request_id] = (subject, estimate)
            if len(self._estimates) > MAX_PENDING:
                del self._estimates[next(iter(self._estimates))]

    def charge(self, key_id: str | None, tokens: int, request_id: str = "") -> None:
        """The tokens a finished request used, against its key's token allowance (less the
        estimate taken when it was let in). A request counted against a user (no key) is
        known by its estimate."""
        estimate = self._estimates.pop(request_id, None) if request_id else None
        if key_id is None and estimate is not None:
            key_id = estimate[0]
        if key_id is None:
            return
        bucket = self._tokens.get(key_id)
        if bucket is not None:
            used = tokens - (estimate[1] if estimate is not None else 0)
            self._count(key_id, 0, used)
            if used > 0:
                bucket.take(used, time.monotonic())
            elif used < 0:  # the estimate was too high: give the difference back
                bucket.give(-used, time.monotonic())

    def _bucket(self, buckets: dict[str, Bucket], key_id: str, limit: int | None) -> Bucket | None:
        if limit is None:
            buckets.pop(key_id, None)
            return None
        bucket = buckets.get(key_id)
        if bucket is None or bucket.per_minute != limit:  # new, or the limit changed
            bucket = buckets[key_id] = Bucket(float(limit))
            # What other routers let this key use in the last minute is spent already.
            now, which = time.monotonic(), 1 if buckets is self._requests else 2
            spent = sum(
                entry[which] for entry in self._others.get(key_id, ()) if now - entry[0] <= 60
            )
            bucket.take(min(spent, limit), now)
        return bucket


def _refused(holder: str, kind: str, limit: int | None, wait: float) -> RateLimited:
    seconds = max(1, math.ceil(wait))
    return RateLimited(
        f"rate limit reached for {holder} on {kind} per minute (limit {limit}); "
        f"try again in {seconds} s",
        error_type=kind, headers={"Retry-After": str(seconds)},
    )  # fmt: skip
