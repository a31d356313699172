"""What a router creates on its first start: the nodes' token and the first admin account."""

from __future__ import annotations

import logging

from sqlalchemy.exc import IntegrityError

from llmlb.common.errors import LlmlbError
from llmlb.common.files import write_private
from llmlb.common.settings import RouterSettings
from llmlb.router.access.accounts import Accounts
from llmlb.router.access.keys import KeyStore

log = logging.getLogger(__name__)

NODE_TOKEN_FILE = "node_token"


class Provisioning:
    def __init__(self, settings: RouterSettings, keys: KeyStore, accounts: Accounts) -> None:
        self.node_token_path = settings.home / NODE_TOKEN_FILE
        self._settings = settings
        self._keys = keys
        self._accounts = accounts

    async def ensure_node_token(self) -> None:
        """The nodes' key: the operator's ``node_token`` when set (several routers may start
        together with it: whoever stores it first wins, the others find it), else one made on
        first start. Its secret is kept in the home folder, where ``llmlb up`` reads it."""
        path = self.node_token_path
        given = self._settings.node_token
        secret = given.get_secret_value() if given else None
        if secret is None and path.exists():
            secret = path.read_text().strip()
        if secret and await self._keys.verify(secret) is not None:
            if not path.exists() or path.read_text().strip() != secret:
                write_private(path, secret + "\n")
            return
        if given is not None and await self._keys.spent(secret or ""):
            raise LlmlbError("the configured node_token belongs to a revoked or expired key: "
                             "set a new one")  # fmt: skip
        try:
            _, secret = await self._keys.create(
                "default node token", ["node"], secret=None if given is None else secret
            )
        except IntegrityError:  # another router stored the same token a moment ago
            if secret is None or await self._keys.verify(secret) is None:
                raise
        write_private(path, secret + "\n")
        log.info("the nodes' token (scope 'node') is stored in %s", path)

    async def ensure_first_admin(self) -> None:
        """On first start with ``LLMLB_ADMIN_PASSWORD`` set, the user ``admin`` with it."""
        password = self._settings.admin_password
        if password is None or await self._accounts.count() > 0:
            return
        try:
            await self._accounts.create("admin", password, "admin")
        except LlmlbError as exc:
            log.warning("no first admin account created from the admin password: %s", exc.message)
            return
        log.info("created the first dashboard account, 'admin', with the admin password")
