"""Single sign-on's three routes: how one may log in, the redirect to the identity provider,
and the provider's redirect back (router.access.sso holds the protocol).

These are browser navigations, not API calls: they answer with redirects. A failed login
lands on the dashboard with ``?sso_error=<code>``, which the login dialog explains; the
reason, for the operator, goes to the router's log.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from llmlb.common.asgi import ORJSONResponse
from llmlb.common.errors import Conflict, NotFound
from llmlb.router.access import (
    PENDING_COOKIE,
    PENDING_COOKIE_SECURE,
    PENDING_SECONDS,
    Pending,
    SsoFailure,
    User,
)
from llmlb.router.api.accounts import set_session_cookie
from llmlb.router.api.common import audited, client_address, service_of
from llmlb.router.telemetry import Who

if TYPE_CHECKING:
    from llmlb.router.access import SingleSignOn

log = logging.getLogger(__name__)

_DASHBOARD = "/dashboard/"
_PENDING_PATH = "/api/auth/oidc"


async def methods(request: Request) -> Response:
    """How the dashboard's login may go: a password, and single sign-on when set up (public:
    the login dialog asks before anyone is logged in)."""
    sso = service_of(request).sso
    answer: dict[str, Any] = {"password": True, "sso": None}
    if sso is not None:
        answer["sso"] = {"label": sso.label, "url": _PENDING_PATH + "/login"}
    return ORJSONResponse(answer)


def _sso(request: Request) -> SingleSignOn:
    sso = service_of(request).sso
    if sso is None:
        raise NotFound("single sign-on is not set up on this router (settings: [router.oidc])")
    return sso


def _pending_cookie(redirect_uri: str) -> tuple[str, str, bool]:
    """The pending login's cookie: name, path, Secure. Over https it is __Host- prefixed
    (which needs Path=/ and Secure); over plain http (loopback) it is kept to its routes."""
    if redirect_uri.startswith("https://"):
        return PENDING_COOKIE_SECURE, "/", True
    return PENDING_COOKIE, _PENDING_PATH, False


def _failed(request: Request, failure: SsoFailure, redirect_uri: str) -> Response:
    # (%r: what the provider said may hold line breaks, which must not forge log lines)
    log.warning("single sign-on from %s failed (%s): %r", client_address(request), failure.code,
                str(failure))  # fmt: skip
    response = RedirectResponse(f"{_DASHBOARD}?sso_error={failure.code}", status_code=303)
    name, path, secure = _pending_cookie(redirect_uri)
    response.delete_cookie(name, path=path, secure=secure, httponly=True, samesite="lax")
    return response


async def login(request: Request) -> Response:
    """To the identity provider, with this browser's login in a cookie to check its answer."""
    sso = _sso(request)
    redirect_uri = sso.redirect_uri(str(request.base_url))
    try:
        url, pending = await sso.start(redirect_uri)
    except SsoFailure as failure:
        return _failed(request, failure, redirect_uri)
    response = RedirectResponse(url, status_code=303)
    # SameSite=Lax: the provider's redirect back is a top-level navigation from its site.
    name, path, secure = _pending_cookie(redirect_uri)
    response.set_cookie(name, pending.cookie(), max_age=PENDING_SECONDS, path=path,
                        httponly=True, samesite="lax", secure=secure)  # fmt: skip
    return response


async def callback(request: Request) -> Response:
    """The provider's answer: a session for the user it names, then the dashboard."""
    sso = _sso(request)
    service = service_of(request)
    redirect_uri = sso.redirect_uri(str(request.base_url))
    name, path, secure = _pending_cookie(redirect_uri)
    params = {k: v for k, v in request.query_params.items() if k in ("code", "state", "error")}
    try:
        identity = await sso.finish(
            params, Pending.from_cookie(request.cookies.get(name)), redirect_uri
        )
        if identity.role is None:
            # Known to the provider but in no group that maps to a role (any more): an
            # account made earlier goes, with its sessions, rather than keep its old role.
            gone = await service.accounts.forget_sso_account(identity.subject)
            raise SsoFailure("no_role", f"{identity.name}: the claim "
                             f"{sso.settings.role_claim!r} maps to no role"
                             + (" (its account was removed)" if gone else ""))  # fmt: skip
        user: User = await service.accounts.sso_account(
            identity.subject, identity.name, identity.role
        )
    except SsoFailure as failure:
        return _failed(request, failure, redirect_uri)
    except Conflict as exc:  # (two local users hold the name and its variant)
        return _failed(request, SsoFailure("name_taken", str(exc)), redirect_uri)
    secret, _ = await service.accounts.open_session(user)
    response = RedirectResponse(_DASHBOARD, status_code=303)
    set_session_cookie(request, response, secret)
    response.delete_cookie(name, path=path, secure=secure, httponly=True, samesite="lax")
    await audited(request, Who(user_id=user.id, user=user.username), response.status_code)
    log.info("%s signed in through single sign-on as %s", user.username, user.role)
    return response
