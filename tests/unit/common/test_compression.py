"""Compressed request bodies are read within the plain body limit (a zip bomb costs only the
limit), and gzip is offered only to clients that accept it."""

from __future__ import annotations

import gzip
import zlib

import pytest

from llmlb.common.compression import Inflater, UnsupportedEncoding, accepts_gzip
from llmlb.common.errors import PayloadTooLarge

BODY = b'{"model": "m", "messages": [{"role": "user", "content": "' + b"x" * 5000 + b'"}]}'


def inflate(encoding: str, data: bytes, limit: int, piece: int = 1000) -> bytes:
    inflater = Inflater(encoding, limit)
    out = b"".join(inflater.feed(data[i : i + piece]) for i in range(0, len(data), piece))
    inflater.finish()
    return out


@pytest.mark.parametrize(("encoding", "pack"), [
    ("gzip", gzip.compress), ("x-gzip", gzip.compress), ("deflate", zlib.compress),
    ("identity", lambda data: data),
])  # fmt: skip
def test_a_compressed_body_is_read_whole(encoding: str, pack: object) -> None:
    assert callable(pack)
    assert inflate(encoding, pack(BODY), 1 << 20) == BODY


def test_a_zip_bomb_is_refused_at_the_limit() -> None:
    bomb = gzip.compress(b"\0" * (512 << 20), 9)  # half a GiB, in about half a MiB
    inflater = Inflater("gzip", 1 << 20)
    # Its first 64 KiB alone would inflate to 64 MiB: refused there, having inflated at
    # most the limit (zlib is asked for no more than that).
    with pytest.raises(PayloadTooLarge, match="after inflating"):
        inflater.feed(bomb[:65536])


@pytest.mark.parametrize("data", [b"not gzip at all", gzip.compress(BODY)[:-30]])
def test_broken_or_cut_gzip_is_a_4xx(data: bytes) -> None:
    with pytest.raises(PayloadTooLarge):
        inflate("gzip", data, 1 << 20)


def test_an_encoding_nobody_reads_is_a_415() -> None:
    with pytest.raises(UnsupportedEncoding) as refused:
        Inflater("br", 1 << 20)
    assert refused.value.status == 415


@pytest.mark.parametrize(("header", "gzipped"), [
    ("gzip, deflate", True), ("br;q=1.0, gzip;q=0.8", True), ("*", True),
    ("identity", False), ("", False), (None, False), ("gzip;q=0", False), ("deflate", False),
])  # fmt: skip
def test_gzip_only_for_clients_that_accept_it(header: str | None, gzipped: bool) -> None:
    assert accepts_gzip(header) is gzipped
