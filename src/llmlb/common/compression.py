"""Compressed bodies, both ways, within the same bounds as plain ones.

- A request body sent with ``Content-Encoding: gzip`` (or ``deflate``) is inflated as it
  arrives, and what it inflates to is bounded like any body: a few KiB that inflate to
  gigabytes (a zip bomb) are refused at the limit, having cost only the limit.
- A whole answer of at least ``MIN_COMPRESSED`` bytes goes out gzipped to a client that
  accepts it (the OpenAI and Anthropic SDKs do). Streams are not compressed: every event
  would have to be flushed through the compressor, for little.
"""

from __future__ import annotations

import gzip
import zlib

from llmlb.common.errors import LlmlbError, PayloadTooLarge

MIN_COMPRESSED = 1024  # smaller answers fit a packet or two anyway
_LEVEL = 5  # zlib's speed and size balance for JSON, about 4x smaller


class UnsupportedEncoding(LlmlbError):
    status = 415
    error_type = "invalid_request_error"
    default_code = "unsupported_content_encoding"


class Inflater:
    """A request body's bytes as they arrive, inflated, at most ``limit`` bytes in all."""

    def __init__(self, encoding: str | None, limit: int) -> None:
        name = (encoding or "identity").strip().lower()
        if name not in ("identity", "gzip", "x-gzip", "deflate"):
            raise UnsupportedEncoding(
                f"a request body in {name[:40]!r} cannot be read: send it as it is, gzip or "
                "deflate", param="content-encoding",
            )  # fmt: skip
        self._limit = limit
        self._size = 0
        # gzip's header (wbits 16+); deflate as HTTP uses it, with zlib's header.
        self._inflate = None if name == "identity" else zlib.decompressobj(
            16 + zlib.MAX_WBITS if "gzip" in name else zlib.MAX_WBITS
        )  # fmt: skip

    def feed(self, data: bytes) -> bytes:
        if self._inflate is None:
            return self._count(data)
        try:
            out = self._inflate.decompress(data, self._limit - self._size + 1)
            if self._inflate.unconsumed_tail:  # more than the limit is waiting in it
                raise self._too_large()
        except zlib.error:
            raise PayloadTooLarge("the request body is not valid gzip or deflate data",
                                  code="bad_content_encoding") from None  # fmt: skip
        return self._count(out)

    def finish(self) -> bytes:
        if self._inflate is None:
            return b""
        if not self._inflate.eof:
            raise PayloadTooLarge("the request body's compressed data is cut short",
                                  code="bad_content_encoding")  # fmt: skip
        return b""

    def _count(self, data: bytes) -> bytes:
        self._size += len(data)
        if self._size > self._limit:
            raise self._too_large()
        return data

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body exceeds the limit of {self._limit} bytes "
                               "(after inflating it)")  # fmt: skip


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an ``Accept-Encoding`` header allows gzip (not with ``q=0``)."""
    for part in (accept_encoding or "").lower().split(","):
        name, _, params = part.strip().partition(";")
        if name.strip() in ("gzip", "*") and params.replace(" ", "") not in ("q=0", "q=0.0"):
            return True
    return False


def gzipped(body: bytes) -> bytes:
    return gzip.compress(body, _LEVEL, mtime=0)
