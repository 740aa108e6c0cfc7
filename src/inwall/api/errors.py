"""Every failure leaves the server as the Anthropic error body: ``{"type":"error","error":{...}}``.

Internal errors never leak details (a request id points operators to the
log line); validation errors name the field and what is wrong with it.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from inwall import errors as e
from inwall.ids import new_id

__all__ = ["error_response", "install_error_handlers"]

log = logging.getLogger("inwall.api")

_STATUS: list[tuple[type[e.InwallError], int, str]] = [
    (e.PayloadTooLarge, 413, "request_too_large"),
    (e.PreconditionFailed, 412, "invalid_request_error"),
    (e.Conflict, 409, "conflict_error"),
    (e.PermissionDenied, 403, "permission_error"),
    (e.AuthError, 401, "authentication_error"),
    (e.NotFound, 404, "not_found_error"),
    (e.InvalidInput, 400, "invalid_request_error"),
    (e.ConfigError, 400, "invalid_request_error"),
    (e.Unavailable, 503, "overloaded_error"),
    (e.ProtocolError, 400, "invalid_request_error"),
]

_HTTP_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "request_too_large",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_response(
    status: int, error_type: str, message: str, *, details: dict[str, Any] | None = None
) -> JSONResponse:
    request_id = new_id("req")
    error: dict[str, Any] = {"type": error_type, "message": message}
    if details:
        error["details"] = details
    headers = {"request-id": request_id}
    if status in (409, 412):
        # The SDK retries 409 by default; a state conflict does not heal by retrying.
        headers["x-should-retry"] = "false"
    return JSONResponse(
        {"type": "error", "error": error, "request_id": request_id}, status_code=status, headers=headers
    )


def _for_inwall(exc: e.InwallError) -> JSONResponse:
    for cls, status, kind in _STATUS:
        if isinstance(exc, cls):
            details = dict(exc.details)
            if exc.error_code:
                details["error_code"] = exc.error_code
            return error_response(status, kind, exc.message, details=details or None)
    return error_response(500, "api_error", "internal error")


def _describe(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = str(err.get("msg", "invalid"))
        if err.get("type") == "extra_forbidden":
            msg = "unknown field"
        if err.get("type") == "json_invalid":
            return "request body is not valid JSON"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(e.InwallError)
    async def _inwall(request: Request, exc: e.InwallError) -> JSONResponse:
        response = _for_inwall(exc)
        if isinstance(exc, e.AuthError):
            # Every 401 and 403 is part of the audit trail (never the credential itself).
            plane = getattr(request.app.state, "plane", None)
            if plane is not None:
                await plane.audit.safe_record(
                    "auth.denied",
                    outcome=str(response.status_code),
                    method=request.method,
                    path=request.url.path,
                    reason=exc.message,
                    client=request.client.host if request.client else None,
                )
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, "invalid_request_error", _describe(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if status == 404 and message == "Not Found":
            message = "no such endpoint"
        return error_response(status, _HTTP_TYPES.get(status, "api_error"), message)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        response = error_response(500, "api_error", "internal server error")
        log.error(
            "unhandled error request_id=%s %s %s: %r",
            response.headers["request-id"],
            request.method,
            request.url.path,
            exc,
            exc_info=exc,
        )
        return response
