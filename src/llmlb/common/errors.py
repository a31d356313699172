"""The one error tree of llmlb.

Every error a client can see is an :class:`LlmlbError`. Each class carries the HTTP status and
the OpenAI error ``type`` it maps to, so handlers never choose a status by hand and every
response body has OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar


class LlmlbError(Exception):
    """Base class: a failure with a status code and an OpenAI-shaped body."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, param=self.param, code=self.code)


def describe(exc: BaseException) -> str:
    """An exception in a log line or a message: its type, and what it says if anything."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def error_body(
    message: str, error_type: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error envelope."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


class BadRequest(LlmlbError):
    status = 400
    error_type = "invalid_request_error"


class InvalidJSON(BadRequest):
    default_code = "invalid_json"


class ContextLengthExceeded(BadRequest):
    default_code = "context_length_exceeded"


class AuthenticationFailed(LlmlbError):
    status = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDenied(LlmlbError):
    status = 403
    error_type = "permission_error"


class NotFound(LlmlbError):
    status = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFound(NotFound):
    default_code = "model_not_found"


class ModelNotSupported(ModelNotFound):
    """Neither in the catalog nor on a node: refused at once."""

    default_code = "model_not_supported"


class MethodNotAllowed(LlmlbError):
    status = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


class Conflict(LlmlbError):
    status = 409
    error_type = "invalid_request_error"
    default_code = "conflict"


class RequestTimeout(LlmlbError):
    """The client did not send its request body in time."""

    status = 408
    error_type = "invalid_request_error"
    default_code = "request_timeout"


class ClientClosedRequest(LlmlbError):
    """The client went away before its answer was ready (nginx's 499)."""

    status = 499
    error_type = "invalid_request_error"
    default_code = "client_closed_request"


class PayloadTooLarge(LlmlbError):
    status = 413
    error_type = "invalid_request_error"
    default_code = "payload_too_large"


class Overloaded(LlmlbError):
    status = 429
    error_type = "rate_limit_error"
    default_code = "overloaded"


class RateLimited(LlmlbError):
    """A key's own limit (requests or tokens per minute): OpenAI's 429 shape, whose
    ``type`` says which limit (``requests`` or ``tokens``)."""

    status = 429
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, error_type: str, headers: dict[str, str]) -> None:
        super().__init__(message, headers=headers)
        self.kind = error_type

    def to_dict(self) -> dict[str, Any]:
        return error_body(self.message, self.kind, code=self.code)


class ModelLoadFailed(LlmlbError):
    """The model file exists but the engine cannot load it (not GGUF, truncated, corrupt)."""

    status = 500
    error_type = "server_error"
    default_code = "model_load_failed"


class CorruptMetadata(LlmlbError):
    """A model's ``metadata.json`` is not a JSON object: the operator must fix or remove it."""

    status = 500
    error_type = "server_error"
    default_code = "corrupt_metadata"


class NotImplementedByEngine(LlmlbError):
    status = 501
    error_type = "invalid_request_error"
    default_code = "not_supported"


class UpstreamFailed(LlmlbError):
    status = 502
    error_type = "upstream_error"
    default_code = "bad_gateway"


class CorruptDownload(UpstreamFailed):
    """A downloaded file failed its GGUF or sha256 check (and was deleted)."""

    default_code = "corrupt_download"


class Unavailable(LlmlbError):
    status = 503
    error_type = "service_unavailable"
    default_code = "unavailable"


class InsufficientMemory(Unavailable):
    default_code = "insufficient_memory"


class UpstreamTimeout(LlmlbError):
    status = 504
    error_type = "timeout_error"
    default_code = "timeout"


class InsufficientStorage(LlmlbError):
    status = 507
    error_type = "insufficient_storage"
    default_code = "insufficient_storage"


class RelayedError(LlmlbError):
    """An error answer from upstream (a cloud provider, or a node under a translated
    endpoint), passed on with the upstream's own status and message."""

    def __init__(
        self, message: str, *, status: int, error_type: str | None = None,
        code: str | None = None, headers: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message, code=code, headers=headers)
        self.status = status  # type: ignore[misc]  # per instance: the upstream's status
        self.error_type = error_type or _type_of_status(status)  # type: ignore[misc]


def _type_of_status(status: int) -> str:
    types = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error",
             504: "timeout_error"}  # fmt: skip
    if status in types:
        return types[status]
    return "invalid_request_error" if status < 500 else "upstream_error"


_ENGINE_TYPES: dict[str, type[LlmlbError]] = {
    "exceed_context_size_error": ContextLengthExceeded,
    "invalid_request_error": BadRequest,
    "not_supported_error": NotImplementedByEngine,
    "unavailable_error": Unavailable,
    "authentication_error": AuthenticationFailed,
    "permission_error": PermissionDenied,
    "not_found_error": NotFound,
}


_INPUT_TOO_LARGE = re.compile(r"input \([0-9]+ tokens\) is too large to process")


def from_engine_error(payload: dict[str, Any]) -> LlmlbError:
    """Map llama.cpp's server error object (``{"code", "message", "type"}``) onto our tree."""
    message = str(payload.get("message") or "the engine failed")
    if _INPUT_TOO_LARGE.search(message):  # an embedding input past the context: the client's
        return ContextLengthExceeded(
            f"{message.split('.')[0]}: longer than the model's context on this node",
            param="input",
        )
    engine_type = str(payload.get("type") or "")
    cls = _ENGINE_TYPES.get(engine_type)
    if cls is None:
        status = int(payload.get("code") or 500)
        cls = BadRequest if 400 <= status < 500 else LlmlbError
    if cls is ContextLengthExceeded:
        return ContextLengthExceeded(message, param="messages")
    return cls(message)
