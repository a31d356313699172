"""What every handler module needs: the service, authorization, parameters."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from llmlb.common.asgi import BODY_KEY
from llmlb.common.errors import BadRequest, LlmlbError, PermissionDenied
from llmlb.router.access import (
    CSRF_HEADER,
    SESSION_COOKIE,
    Credentials,
    Principal,
    Scope,
    normalised_address,
)
from llmlb.router.service import RouterService
from llmlb.router.telemetry import Who

Handler = Callable[[Request], Awaitable[Response]]
_INTEGER = re.compile(r"-?[0-9]{1,18}")
M = TypeVar("M", bound=BaseModel)


def service_of(request: Request) -> RouterService:
    service: RouterService = request.app.state.service
    return service


def credentials(request: Request) -> Credentials:
    return Credentials(
        authorization=request.headers.get("authorization"),
        x_api_key=request.headers.get("x-api-key"),
        client=client_address(request),
        session=request.cookies.get(SESSION_COOKIE),
        csrf=request.headers.get(CSRF_HEADER),
        write=request.method not in ("GET", "HEAD"),
    )


def client_address(request: Request) -> str:
    """The caller's address in one spelling (a proxy's X-Forwarded-For counts only from
    ``trusted_proxies``, see ``common.serving``)."""
    return normalised_address(request.client.host if request.client else None)


# What a plain HTML form (or a no-cors fetch) may send to any address without a preflight.
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")


def refuse_cross_site(request: Request) -> None:
    """Any web page an operator visits can make their browser send a form post to the router,
    its loopback address included, and loopback may need no credential. So a change to the
    admin API is refused when the browser says it comes from another site (Sec-Fetch-Site)
    or when it has a form's content type, which neither the dashboard nor the CLI sends."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    site = request.headers.get("sec-fetch-site")
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if site in ("cross-site", "same-site") or media in _FORM_TYPES:
        raise PermissionDenied(
            "changes to the admin API are refused from another site's page or as a form post"
            " (send JSON)",
            code="cross_site_request",
        )


async def authorize(request: Request, scope: Scope, *, own_account: bool = False) -> Principal:
    """Who the caller is, refused unless they may call ``scope``. ``own_account``: a viewer
    may still change what is theirs (their password)."""
    if scope == "admin":
        refuse_cross_site(request)
    return await service_of(request).auth.require(
        scope, credentials(request), own_account=own_account
    )


def admin(handler: Handler) -> Handler:
    """The handler behind the admin login: a user (writes need role admin) or an admin key.
    Every write the caller may try goes into the audit trail with its result."""

    async def guarded(request: Request) -> Response:
        request.state.principal = principal = await authorize(request, "admin")
        # With workers: a node that joined through another one is known here too.
        await service_of(request).registry.caught_up()
        if request.method in ("GET", "HEAD"):
            return await handler(request)
        status = 500
        try:
            response = await handler(request)
            status = response.status_code
            return response
        except LlmlbError as exc:
            status = exc.status
            raise
        finally:
            await audited(request, principal.who, status)

    return guarded


async def audited(request: Request, who: Who, status: int) -> None:
    """The request as a change in the audit trail (router.telemetry.audit)."""
    await service_of(request).audit.record(
        who, client_address(request), request.method, request.url.path,
        dict(request.path_params), status, request.scope.get(BODY_KEY),
    )  # fmt: skip


def validated(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BadRequest(f"{where}: {first['msg']}", param=where or None) from exc


def float_param(request: Request, name: str) -> float | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise BadRequest(f"query parameter {name!r} must be a number", param=name) from None


@overload
def int_param(request: Request, name: str, default: int, low: int, high: int) -> int: ...
@overload
def int_param(request: Request, name: str, default: None, low: int, high: int) -> int | None: ...
def int_param(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    """An integer query parameter within [low, high]; 400 naming it otherwise."""
    value = request.query_params.get(name)
    if value is None:
        return default
    if not _INTEGER.fullmatch(value):
        raise BadRequest(f"query parameter {name!r} must be an integer", param=name)
    number = int(value)
    if not low <= number <= high:
        raise BadRequest(f"query parameter {name!r} must be between {low} and {high}", param=name)
    return number
