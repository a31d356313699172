"""Dashboard accounts: users with a role, passwords hashed with argon2id, login sessions.

- Roles: ``admin`` may do everything; ``viewer`` may read the admin API and the dashboard,
  and every write is refused (by the API, not only by the page).
- A session is a random secret in an HttpOnly, SameSite=Strict cookie; the database keeps
  its SHA-256 only, with a CSRF token that every cookie-authenticated write must echo in a
  header. Sessions end at logout, at expiry, and when the user's password changes.
- A single sign-on account (``router.access.sso``) is made at its first login through the
  identity provider and found again by its identity there, not by its name; it has no
  password here, and its role is the provider's at each login.
- Hashing is slow by design (argon2id: 64 MiB, about 50 ms), so it runs in threads, at most
  two at once: a burst of logins cannot take the router's memory or its event loop.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import re
import secrets
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from llmlb.common.errors import BadRequest, Conflict, NotFound, Overloaded
from llmlb.router.access.lockout import LoginThrottle, client_key
from llmlb.router.storage.db import sessions, users

Role = Literal["admin", "viewer"]
ROLES: tuple[Role, ...] = get_args(Role)
USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
PASSWORD_MIN, PASSWORD_MAX = 8, 256  # the maximum bounds the work one login attempt costs
# argon2id at OWASP's recommended cost (19 MiB, 2 passes, 1 lane). argon2-cffi's default
# takes 64 MiB a hash: the dummy hash below made every router start peak 50 MB higher.
# Hashes made with other parameters still verify (each hash carries its own).
_HASHER = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)


@functools.cache
def _dummy_hash() -> str:
    """What a wrong user name is checked against, so that it costs as long as a wrong
    password (made at the first such check, not at import)."""
    return _HASHER.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class User:
    id: str
    username: str
    role: Role
    created_at: float
    password_changed_at: float
    sso: bool = False  # signs in through the identity provider; no password here

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.username,
            "role": self.role,
            "created_at": self.created_at,
            "password_changed_at": self.password_changed_at,
            "sso": self.sso,
        }


@dataclass(frozen=True)
class Session:
    user: User
    csrf: str
    expires_at: float


def check_username(username: object) -> str:
    if not isinstance(username, str) or not USERNAME.fullmatch(username):
        raise BadRequest(
            "a user name is 1 to 64 letters, digits and . _ @ -, starting with a letter or digit",
            param="username",
        )
    return username


def check_password(password: object) -> str:
    if not isinstance(password, str) or not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise BadRequest(
            f"a password has {PASSWORD_MIN} to {PASSWORD_MAX} characters", param="password"
        )
    return password


def check_role(role: object) -> Role:
    if role not in ROLES:
        raise BadRequest(f"role must be one of {list(ROLES)}", param="role")
    return role


def _user(row: Any) -> User:
    return User(
        row.id, row.username, row.role, row.created_at, row.password_changed_at,
        sso=row.sso_subject is not None,
    )  # fmt: skip


# A single sign-on account's password hash: no password verifies against it.
_NO_PASSWORD = "!sso"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


class Accounts:
    def __init__(self, engine: AsyncEngine, session_hours: float = 12.0) -> None:
        self._engine = engine
        self._session_seconds = session_hours * 3600
        # Recently seen sessions, so that a page's requests do not each read the database;
        # an entry is trusted for a few seconds (another router may have logged it out).
        self._recent: dict[str, tuple[float, Session]] = {}
        self._any_user: tuple[float, bool] = (0.0, False)
        self._hashing = asyncio.Semaphore(2)
        self.throttle = LoginThrottle(engine)

    async def _hash(self, password: str) -> str:
        async with self._hashing:
            return await asyncio.to_thread(_HASHER.hash, password)

    async def _verify(self, password_hash: str, password: str) -> bool:
        async with self._hashing:
            try:
                return await asyncio.to_thread(_HASHER.verify, password_hash, password)
            except (VerificationError, InvalidHashError):
                return False

    # -- users -------------------------------------------------------------------------------

    async def count(self) -> int:
        async with self._engine.connect() as connection:
            return int(
                (await connection.execute(select(func.count()).select_from(users))).scalar_one()
            )

    async def any(self) -> bool:
        """Whether some user exists (read again at most every 5 s: asked on every call)."""
        now = time.monotonic()
        if now - self._any_user[0] > 5.0:
            self._any_user = (now, await self.count() > 0)
        return self._any_user[1]

    async def list(self) -> list[User]:
        async with self._engine.connect() as connection:
            rows = await connection.execute(select(users).order_by(users.c.username))
            return [_user(row) for row in rows]

    async def get(self, username: str) -> User:
        async with self._engine.connect() as connection:
            row = (
                await connection.execute(select(users).where(users.c.username == username))
            ).first()
        if row is None:
            raise NotFound(f"no user named {username!r}", code="user_not_found")
        return _user(row)

    async def create(self, username: str, password: str, role: Role) -> User:
        check_username(username)
        check_password(password)
        check_role(role)
        now = time.time()
        user = User(str(uuid.uuid4()), username, role, now, now)
        password_hash = await self._hash(password)
        async with self._engine.begin() as connection:
            taken = await connection.execute(select(users.c.id).where(users.c.username == username))
            if taken.first() is not None:
                raise Conflict(f"a user named {username!r} exists", code="user_exists")
            await connection.execute(
                insert(users).values(
                    id=user.id, username=username, password_hash=password_hash, role=role,
                    created_at=now, password_changed_at=now,
                )
            )  # fmt: skip
        self._any_user = (time.monotonic(), True)
        return user

    async def set_role(self, username: str, role: Role) -> User:
        check_role(role)
        user = await self.get(username)
        if user.role == "admin" and role != "admin":
            await self._keep_an_admin(user)
        async with self._engine.begin() as connection:
            await connection.execute(update(users).where(users.c.id == user.id).values(role=role))
        self._recent.clear()
        return await self.get(username)

    async def set_password(self, username: str, password: str) -> User:
        """A new password; every session of the user ends (a stolen cookie stops working)."""
        check_password(password)
        user = await self.get(username)
        if user.sso:
            raise BadRequest(
                f"{username!r} signs in through single sign-on: its password is the identity "
                "provider's", code="sso_account",
            )  # fmt: skip
        password_hash = await self._hash(password)
        async with self._engine.begin() as connection:
            await connection.execute(
                update(users).where(users.c.id == user.id)
                .values(password_hash=password_hash, password_changed_at=time.time())
            )  # fmt: skip
            await connection.execute(delete(sessions).where(sessions.c.user_id == user.id))
        self._recent.clear()
        return await self.get(username)

    async def delete(self, username: str) -> None:
        user = await self.get(username)
        if user.role == "admin":
            await self._keep_an_admin(user)
        async with self._engine.begin() as connection:
            await connection.execute(delete(users).where(users.c.id == user.id))
            await connection.execute(delete(sessions).where(sessions.c.user_id == user.id))
        self._recent.clear()
        self._any_user = (0.0, False)

    async def _keep_an_admin(self, leaving: User) -> None:
        admins = [u for u in await self.list() if u.role == "admin" and u.id != leaving.id]
        if not admins:
            raise Conflict(
                f"{leaving.username!r} is the last admin; make another user admin first",
                code="last_admin",
            )

    async def check(self, username: str, password: str) -> User | None:
        """The user these credentials name, or None. Every refusal costs one hash, so that
        the time taken does not tell a real user name from an unknown one."""
        if len(password) > PASSWORD_MAX or len(username) > 64:
            await self._verify(_dummy_hash(), password[:PASSWORD_MAX])
            return None
        async with self._engine.connect() as connection:
            row = (
                await connection.execute(select(users).where(users.c.username == username))
            ).first()
        if row is None or row.sso_subject is not None:  # (the same time for either)
            await self._verify(_dummy_hash(), password)
            return None
        if not await self._verify(row.password_hash, password):
            return None
        return _user(row)

    async def login(self, username: str, password: str, client: str) -> User | None:
        """``check`` behind the throttle (``router.access.lockout``, shared by the routers on the
        database), for every way a password is offered (the login form, basic auth, a
        password change): 429 while the name or address is locked out.

        The attempt counts as failed before the hash is checked and is forgiven on success,
        so that a burst of parallel guesses cannot all slip in before the first one fails."""
        who = ("user:" + username.lower()[:64], client_key(client))
        wait = await self.throttle.attempt(*who)
        if wait > 0:
            raise Overloaded(
                f"too many failed logins; try again in {math.ceil(wait)} s",
                code="too_many_login_attempts", headers={"Retry-After": str(math.ceil(wait))},
            )  # fmt: skip
        user = await self.check(username, password)
        if user is not None:
            await self.throttle.succeeded(*who)
        return user

    async def sso_account(self, subject: str, name: str, role: Role) -> User:
        """The account of an identity-provider ``subject`` (already hashed with its issuer),
        made at its first login under ``name`` (or ``name``-<6 hex of the subject> when a
        local or another provider's user has that name), and given ``role``: the provider
        decides it at every login."""
        check_role(role)
        try:
            return await self._sso_account(subject, name, role)
        except IntegrityError:  # the same user's first login on two routers at once
            return await self._sso_account(subject, name, role)

    async def _sso_account(self, subject: str, name: str, role: Role) -> User:
        async with self._engine.begin() as connection:
            row = (
                await connection.execute(select(users).where(users.c.sso_subject == subject))
            ).first()
            if row is not None:
                if row.role != role:
                    await connection.execute(
                        update(users).where(users.c.id == row.id).values(role=role)
                    )
                    self._recent.clear()
                return replace(_user(row), role=role)
            for candidate in (name, f"{name[:57]}-{subject[:6]}"):
                taken = await connection.execute(
                    select(users.c.id).where(users.c.username == candidate)
                )
                if taken.first() is None:
                    break
            else:
                raise Conflict(f"a user named {name!r} exists", code="user_exists")
            now = time.time()
            user = User(str(uuid.uuid4()), candidate, role, now, now, sso=True)
            await connection.execute(
                insert(users).values(
                    id=user.id, username=user.username, password_hash=_NO_PASSWORD, role=role,
                    created_at=now, password_changed_at=now, sso_subject=subject,
                )
            )  # fmt: skip
        self._any_user = (time.monotonic(), True)
        return user

    async def forget_sso_account(self, subject: str) -> str | None:
        """Remove the account of this provider ``subject`` with its sessions (the provider
        no longer gives it a role); its name, or None when it had none."""
        async with self._engine.begin() as connection:
            row = (
                await connection.execute(select(users).where(users.c.sso_subject == subject))
            ).first()
            if row is None:
                return None
            await connection.execute(delete(users).where(users.c.id == row.id))
            await connection.execute(delete(sessions).where(sessions.c.user_id == row.id))
        self._recent.clear()
        self._any_user = (0.0, False)
        return str(row.username)

    # -- sessions ----------------------------------------------------------------------------

    async def open_session(self, user: User) -> tuple[str, Session]:
        """A new session: (the cookie's secret, the session)."""
        secret, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
        now = time.time()
        session = Session(user, csrf, now + self._session_seconds)
        async with self._engine.begin() as connection:
            await connection.execute(delete(sessions).where(sessions.c.expires_at < now))
            await connection.execute(
                insert(sessions).values(
                    id=_digest(secret), user_id=user.id, csrf=csrf, created_at=now,
                    expires_at=session.expires_at,
                )
            )  # fmt: skip
        return secret, session

    async def session(self, secret: str) -> Session | None:
        """The live session of this cookie secret, or None."""
        now = time.monotonic()
        digest = _digest(secret)
        cached = self._recent.get(digest)
        if cached is not None and now - cached[0] < 5.0 and cached[1].expires_at > time.time():
            return cached[1]
        async with self._engine.connect() as connection:
            row = (
                await connection.execute(
                    select(sessions.c.csrf, sessions.c.expires_at, users)
                    .join(users, users.c.id == sessions.c.user_id)
                    .where(sessions.c.id == digest)
                )
            ).first()
        if row is None or row.expires_at <= time.time():
            self._recent.pop(digest, None)
            return None
        found = Session(_user(row), row.csrf, row.expires_at)
        if len(self._recent) > 10_000:
            self._recent.clear()
        self._recent[digest] = (now, found)
        return found

    async def close_session(self, secret: str) -> None:
        digest = _digest(secret)
        self._recent.pop(digest, None)
        async with self._engine.begin() as connection:
            await connection.execute(delete(sessions).where(sessions.c.id == digest))
