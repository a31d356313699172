"""What a router creates on its first start: the nodes' token and the first admin account."""

from __future__ import annotations

import logging

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
        """On first start, create a ``node`` key and keep its secret in the home folder."""
        path = self.node_token_path
        if path.exists() and await self._keys.verify(path.read_text().strip()) is not None:
            return
        _, secret = await self._keys.create("default node token", ["node"])
        write_private(path, secret + "\n")
        log.info("created a node token (scope 'node'); it is stored in %s", path)

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
