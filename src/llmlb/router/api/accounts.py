"""Logging in and out, one's own password, and (for admins) the user accounts.

The login answer sets the session cookie and returns the CSRF token that the dashboard sends
with every change it makes (``x-csrf-token``).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from llmlb.common.asgi import ORJSONResponse, read_json
from llmlb.common.errors import AuthenticationFailed, BadRequest
from llmlb.router.access import (
    SESSION_COOKIE,
    Session,
    User,
    check_password,
    check_role,
    check_username,
)
from llmlb.router.api.common import (
    audited,
    authorize,
    client_address,
    refuse_cross_site,
    service_of,
)
from llmlb.router.telemetry import Who

_BODY_LIMIT = 16 * 1024


def _session_answer(session: Session, **extra: Any) -> dict[str, Any]:
    return {
        "user": session.user.to_dict(),
        "role": session.user.role,
        "csrf_token": session.csrf,
        "expires_at": session.expires_at,
        **extra,
    }


async def login(request: Request) -> Response:
    refuse_cross_site(request)  # or another site could log the browser in as its own user
    service = service_of(request)
    body = await read_json(request, _BODY_LIMIT)
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise BadRequest("'username' and 'password' are required")
    user = await service.accounts.login(username, password, client_address(request))
    if user is None:  # (failures: counted by the login throttle, not the audit trail)
        raise AuthenticationFailed("wrong user name or password", code="invalid_login")
    response = await _new_session(request, user)
    await audited(request, Who(user_id=user.id, user=user.username), response.status_code)
    return response


async def _new_session(request: Request, user: User) -> Response:
    secret, session = await service_of(request).accounts.open_session(user)
    response = ORJSONResponse(_session_answer(session))
    set_session_cookie(request, response, secret)
    return response


def set_session_cookie(request: Request, response: Response, secret: str) -> None:
    response.set_cookie(
        SESSION_COOKIE, secret, max_age=int(service_of(request).settings.session_hours * 3600),
        path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https",
    )  # fmt: skip


async def logout(request: Request) -> Response:
    refuse_cross_site(request)
    secret = request.cookies.get(SESSION_COOKIE)
    if secret:
        await service_of(request).accounts.close_session(secret)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


async def me(request: Request) -> Response:
    """Who the caller is to the dashboard: its user and role, or open (loopback, no accounts)."""
    principal = await authorize(request, "admin")
    service = service_of(request)
    answer: dict[str, Any] = {
        "user": principal.user.to_dict() if principal.user else None,
        "role": principal.role,
        "csrf_token": principal.csrf,
        "open": principal.user is None and await service.auth.open_to_loopback(),
    }
    return ORJSONResponse(answer)


async def change_password(request: Request) -> Response:
    """One's own password (current one required); other sessions end, this one is renewed."""
    principal = await authorize(request, "admin", own_account=True)
    if principal.user is None:
        raise BadRequest("only a logged-in user has a password to change")
    if principal.user.sso:
        raise BadRequest("you sign in through single sign-on: your password is the identity "
                         "provider's", code="sso_account")  # fmt: skip
    body = await read_json(request, _BODY_LIMIT)
    current, new = body.get("current_password"), body.get("new_password")
    if not isinstance(current, str):
        raise BadRequest("'current_password' is required", param="current_password")
    check_password(new)
    accounts = service_of(request).accounts
    if await accounts.login(principal.user.username, current, client_address(request)) is None:
        raise AuthenticationFailed("the current password is wrong", code="invalid_login")
    user = await accounts.set_password(principal.user.username, str(new))
    service_of(request).auth.forget_passwords()
    response = await _new_session(request, user)
    await audited(request, principal.who, response.status_code)
    return response


# -- users (behind ``admin`` in the route table) -------------------------------------------------


async def list_users(request: Request) -> Response:
    users = await service_of(request).accounts.list()
    return ORJSONResponse({"data": [u.to_dict() for u in users]})


async def create_user(request: Request) -> Response:
    body = await read_json(request, _BODY_LIMIT)
    user = await service_of(request).accounts.create(
        check_username(body.get("username")),
        check_password(body.get("password")),
        check_role(body.get("role", "viewer")),
    )
    return ORJSONResponse(user.to_dict(), status_code=201)


async def update_user(request: Request) -> Response:
    """``{"role": ...}`` and/or ``{"password": ...}`` (an admin resetting it)."""
    body = await read_json(request, _BODY_LIMIT)
    service = service_of(request)
    username = request.path_params["username"]
    if "password" not in body and "role" not in body:
        raise BadRequest("nothing to change: give 'role' or 'password'")
    user = await service.accounts.get(username)
    try:
        if "password" in body:
            user = await service.accounts.set_password(username, check_password(body["password"]))
        if "role" in body:
            user = await service.accounts.set_role(username, check_role(body["role"]))
    finally:  # a password may have changed even when the role then could not
        service.auth.forget_passwords()
    return ORJSONResponse(user.to_dict())


async def delete_user(request: Request) -> Response:
    await service_of(request).accounts.delete(request.path_params["username"])
    service_of(request).auth.forget_passwords()
    return Response(status_code=204)
