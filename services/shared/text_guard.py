"""Text the database cannot store, refused in a request before its endpoint runs.

`StorableTextRoute` is the route class under every service's routes (`TransactionalRoute`
extends it): a query parameter or a JSON body field holding a NUL or a lone surrogate is
422 `validation_error`, naming the parameter or the field and never repeating its text (see
`services.shared.storable_text`). A path holding a NUL names nothing there is: 404 (or
422 for a PUT, which would make it). Nothing has run yet, so nothing has changed.

Like a malformed body (400) or an oversized one (413), this is said before the caller's
token is looked at: it is about the request's form, and says nothing about what exists.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, ClassVar
from urllib.parse import parse_qsl

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import Scope

from services.shared.errors import FieldProblem, NotFound, UnstorableText
from services.shared.storable_text import (
    KEY_MESSAGE,
    NUL,
    NUL_MESSAGE,
    is_storable,
    may_hold_unstorable,
    unstorable_fields,
)


class StorableTextRoute(APIRoute):
    """A route that refuses unstorable text in its URL and its JSON body.

    The body is the one the endpoint gets: read and parsed once, by whichever looks first,
    and kept on the request. A body without a suspect byte (nearly all of them) costs one
    scan; only one with such a byte is parsed here and walked to name its fields.
    """

    # False for a route whose body is a batch of items judged one by one (a peer's
    # events): it looks at each item itself, so that one bad item refuses only itself.
    checks_body: ClassVar[bool] = True

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        check_body = self.checks_body and self.body_field is not None

        async def refusing_unstorable_text(request: Request) -> Response:
            refuse_unstorable_url(request.scope)
            if check_body:
                await refuse_unstorable_body(request)
            return await handler(request)

        return refusing_unstorable_text


def refuse_unstorable_url(scope: Scope) -> None:
    """For a path holding a NUL: 404, as nothing has such a name or id, or 422 naming the
    parameter for a PUT, which would make what the path names. 422 naming each query
    parameter that holds a NUL. (Percent-decoding replaces bytes that are not UTF-8, so a
    URL cannot carry a lone surrogate.)"""
    path: str = scope["path"]
    # Most paths are ASCII without a NUL, known without a call.
    if (NUL in path or not path.isascii()) and not is_storable(path):
        if scope["method"] == "PUT":
            raise UnstorableText(_unstorable_path_parameters(scope))
        raise NotFound("not found")
    query: bytes = scope["query_string"]
    if query and (query.find(b"%00") >= 0 or query.find(b"\x00") >= 0):
        problems = _unstorable_parameters(query)
        if problems:
            raise UnstorableText(problems)


def _unstorable_path_parameters(scope: Scope) -> list[FieldProblem]:
    named = [
        FieldProblem(path=f"path.{name}", message=NUL_MESSAGE)
        for name, value in scope.get("path_params", {}).items()
        if isinstance(value, str) and not is_storable(value)
    ]
    return named or [FieldProblem(path="path", message=NUL_MESSAGE)]


def _unstorable_parameters(query: bytes) -> list[FieldProblem]:
    problems = []
    # As Starlette reads the query string, so the names are the ones the endpoint sees.
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if not is_storable(name):
            problems.append(FieldProblem(path="query", message=KEY_MESSAGE))
        elif not is_storable(value):
            problems.append(FieldProblem(path=f"query.{name}", message=NUL_MESSAGE))
    return problems


async def refuse_unstorable_body(request: Request) -> None:
    """422 naming every field of the JSON body that holds unstorable text."""
    body = await request.body()
    if not may_hold_unstorable(body):
        return
    try:
        parsed = await request.json()
    except (ValueError, RecursionError):
        return  # not JSON: the endpoint's own parsing says so (400)
    problems = unstorable_fields(parsed)
    if problems:
        raise UnstorableText(problems)
