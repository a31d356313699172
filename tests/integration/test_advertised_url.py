"""Which URL a node tells its router (no traffic leaves the machine: UDP connect sends nothing)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from llmlb.node.server import NoAdvertiseUrl, advertised_url


@pytest.fixture
def wildcard() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("0.0.0.0", 0))
    yield sock
    sock.close()


def test_a_node_bound_to_one_address_advertises_it() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        assert advertised_url(sock, "http://127.0.0.1:32768") == f"http://127.0.0.1:{port}"


def test_a_wildcard_node_advertises_the_interface_that_reaches_the_router(
    wildcard: socket.socket,
) -> None:
    port = wildcard.getsockname()[1]
    url = advertised_url(wildcard, "http://127.0.0.1:32768")
    assert url == f"http://127.0.0.1:{port}"
    assert "0.0.0.0" not in url


def test_a_wildcard_node_with_an_unresolvable_router_asks_for_advertise_url(
    wildcard: socket.socket,
) -> None:
    with pytest.raises(NoAdvertiseUrl) as raised:
        advertised_url(wildcard, "http://no-such-router.invalid:32768")
    assert "--advertise-url" in raised.value.message
