"""Typed errors and the one error envelope.

Services raise `AppError` subclasses; `install_error_handlers` renders every error, from
ours to FastAPI's 422s and anything unexpected, as

    {"error": "<stable_code>", "detail": "<human text>", "request_id": "..."}

Messages never carry patient data: they name fields and rules, never values.

    AppError
    ├── BadRequest              400
    ├── Unauthorized            401
    ├── Forbidden               403
    ├── NotFound                404
    ├── Conflict                409
    ├── PayloadTooLarge         413
    ├── UnsupportedMediaType    415
    ├── Unprocessable           422
    │   └── UnstorableText      422 (a NUL or a lone surrogate in a field)
    ├── RateLimited             429
    └── UpstreamUnavailable     503
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.shared.request_context import current_request_id

logger = logging.getLogger("reach.errors")

VALIDATION_DETAIL = "the request has invalid or missing fields"


class FieldProblem(BaseModel):
    path: str
    message: str


class ErrorBody(BaseModel):
    """The error envelope; documented on every route through `responses=`."""

    error: str
    detail: str
    request_id: str | None = None
    fields: list[FieldProblem] | None = None


class AppError(Exception):
    status_code: ClassVar[int] = 500
    default_code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code or self.default_code
        self.extra = extra or {}
        self.headers = headers or {}


class BadRequest(AppError):
    status_code = 400
    default_code = "bad_request"


class Unauthorized(AppError):
    status_code = 401
    default_code = "unauthorized"


class Forbidden(AppError):
    status_code = 403
    default_code = "forbidden"


class NotFound(AppError):
    status_code = 404
    default_code = "not_found"


class Conflict(AppError):
    status_code = 409
    default_code = "conflict"


class PayloadTooLarge(AppError):
    status_code = 413
    default_code = "payload_too_large"


class UnsupportedMediaType(AppError):
    status_code = 415
    default_code = "unsupported_media_type"


class Unprocessable(AppError):
    status_code = 422
    default_code = "validation_error"


class UnstorableText(Unprocessable):
    """Text the database cannot store, in the fields named: the usual 422, with the
    field paths and the rule, never the text."""

    def __init__(self, fields: Sequence[FieldProblem]) -> None:
        super().__init__(
            VALIDATION_DETAIL, extra={"fields": [problem.model_dump() for problem in fields]}
        )


class RateLimited(AppError):
    status_code = 429
    default_code = "rate_limited"


class UpstreamUnavailable(AppError):
    status_code = 503
    default_code = "upstream_unavailable"


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
}


def error_response(
    status_code: int,
    code: str,
    detail: str,
    *,
    fields: Sequence[FieldProblem] | None = None,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"error": code, "detail": detail, "request_id": current_request_id()}
    if fields is not None:
        body["fields"] = [problem.model_dump() for problem in fields]
    if extra:
        body.update({key: value for key, value in extra.items() if key not in body})
    return JSONResponse(body, status_code=status_code, headers=headers)


def validation_problems(errors: Sequence[Any]) -> list[FieldProblem]:
    """Field paths and rule messages from pydantic errors, without the offending input."""
    problems = []
    for error in errors:
        location = [str(part) for part in error.get("loc", ()) if part not in ("body",)]
        path = ".".join(location) or "body"
        problems.append(FieldProblem(path=path, message=str(error.get("msg", "is invalid"))))
    return problems


async def _app_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)  # noqa: S101 -- registered for AppError only
    return error_response(
        exc.status_code, exc.code, exc.detail, extra=exc.extra, headers=exc.headers
    )


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # noqa: S101
    problems = validation_problems(exc.errors())
    if any(error.get("type") == "json_invalid" for error in exc.errors()):
        return error_response(400, "malformed_json", "the request body is not valid JSON")
    return error_response(422, "validation_error", VALIDATION_DETAIL, fields=problems)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101
    code = _HTTP_CODES.get(exc.status_code, "error")
    detail = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, detail, headers=dict(exc.headers or {}))


def install_error_handlers(app: FastAPI) -> None:
    """Render every error raised inside `app` in the envelope.

    Exceptions nobody expected are caught by `RequestContextMiddleware`, which answers a
    generic 500 with the request id and logs the traceback without request data.
    """
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)


def error_responses(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status documented with the envelope's schema."""
    return {code: {"model": ErrorBody} for code in status_codes}
