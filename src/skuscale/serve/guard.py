"""The service's outermost request checks, as a pure ASGI middleware.

FastAPI reads (and, for multipart, spools to disk) a request's whole body before it
runs the route's dependencies, so neither a route's size checks nor its auth
dependency can stop a client that streams an endless body. :class:`RequestGuard` sits
in front of the routes and, before any byte of the body is read:

* answers **401** to a protected route (``/v1/...``) without a valid token;
* answers **413** when ``Content-Length`` is over the route's cap;
* answers **422** when the path or query string holds a NUL character (PostgreSQL
  text cannot store one, and no identifier or filter value contains one);

and then counts the body's bytes as they arrive from ``receive``, answering **413**
as soon as a body without (or with a lying) ``Content-Length`` passes the cap.

It also times every request for ``skuscale_request_duration_seconds``, labelled with
the route template and the HTTP method mapped onto a fixed set.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import unquote_to_bytes

from starlette._utils import get_route_path
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The ``method`` label values of the latency histogram; any other method is ``other``.
METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})
_CONVERTOR = re.compile(r"\{(\w+):\w+\}")


def method_label(method: str) -> str:
    """``method`` if it is a standard one, else ``"other"`` (a client picks the method name freely)."""
    return method if method in METHODS else "other"


def route_label(template: str) -> str:
    """The route template without path convertors (``{sku:path}`` -> ``{sku}``), stable for dashboards."""
    return _CONVERTOR.sub(r"{\1}", template)


class BodyTooLarge(HTTPException):
    """Raised by the guarded ``receive`` once the body passes its cap (FastAPI re-raises HTTPExceptions)."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body over the limit of {limit} bytes")
        self.limit = limit


def required_role(route: BaseRoute) -> str | None:
    """The role a route's dependencies demand (their ``required_role`` attribute), or None."""
    stack = [getattr(route, "dependant", None)]
    while stack:
        dependant = stack.pop()
        if dependant is None:
            continue
        role = getattr(dependant.call, "required_role", None)
        if role is not None:
            return role
        stack.extend(dependant.dependencies)
    return None


def has_nul(scope: Scope) -> bool:
    """Whether the (decoded) path or the query string holds a NUL character."""
    return "\x00" in scope.get("path", "") or b"\x00" in unquote_to_bytes(scope.get("query_string", b""))


class RequestGuard:
    """Pure ASGI middleware: early 401/413/422, a byte-counting ``receive``, request latency.

    Parameters
    ----------
    app : ASGI app
    routes : iterable of starlette routes
        The app's routes: the middleware finds the route template (for the metric) and
        whether the request reaches a route at all (only those need the early auth check).
    body_limit : callable (method, path) -> int
        Largest body, in bytes, the request may send.
    protected : callable (path) -> bool
        Whether the route needs a token.
    role_of : callable (Request) -> str or None
        The role of the request's token, or None without a valid one.
    role_rank : mapping
        Rank of each role; a route whose dependencies carry a ``required_role``
        attribute (:func:`skuscale.serve.auth.require`) answers 403 early to a lower one.

    Paths are taken as routing sees them (without the ASGI ``root_path``).
    observe : callable (method, route, status, seconds), optional
        Records the latency of every request.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Iterable[BaseRoute],
        body_limit: Callable[[str, str], int],
        protected: Callable[[str], bool],
        role_of: Callable[[Request], str | None],
        role_rank: Mapping[str, int],
        observe: Callable[[str, str, int, float], None] | None = None,
    ):
        self.app = app
        self.routes = routes
        self.body_limit = body_limit
        self.protected = protected
        self.role_of = role_of
        self.role_rank = dict(role_rank)
        self.observe = observe
        # Routes are fixed once the app is built (and not hashable): their roles, by id.
        self._roles = {id(route): required_role(route) for route in routes}

    def _route(self, scope: Scope) -> BaseRoute | None:
        partial = None
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return route
            if match == Match.PARTIAL and partial is None:
                partial = route
        return partial

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        state = {"status": 500, "started": False}
        route = self._route(scope)

        async def send_observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = int(message["status"])
                state["started"] = True
            await send(message)

        try:
            path = get_route_path(scope)
            limit = self.body_limit(scope["method"], path)
            early = self._early_answer(scope, route, path, limit)
            if early is not None:
                await early(scope, receive, send_observed)
                return
            received = 0

            async def receive_limited() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise BodyTooLarge(limit)
                return message

            try:
                await self.app(scope, receive_limited, send_observed)
            except BodyTooLarge as exc:
                # Normally the app's exception handler has answered 413 already; this covers
                # a body read outside FastAPI's request handling.
                if state["started"]:
                    raise
                await JSONResponse({"detail": exc.detail}, 413)(scope, receive, send_observed)
        finally:
            if self.observe is not None:
                template = route_label(getattr(scope.get("route") or route, "path", None) or "unmatched")
                self.observe(method_label(scope["method"]), template, state["status"], time.perf_counter() - start)

    def _early_answer(self, scope: Scope, route: BaseRoute | None, path: str, limit: int) -> JSONResponse | None:
        """The answer given before reading the body, or None to let the app run."""
        if route is not None and self.protected(path):
            role = self.role_of(Request(scope))
            if role is None:
                return JSONResponse(
                    {"detail": "missing or invalid bearer token"}, 401, headers={"WWW-Authenticate": "Bearer"}
                )
            needed = self._roles.get(id(route))
            if needed is not None and self.role_rank[role] < self.role_rank[needed]:
                # Before the body: a low-privilege token must not make the server spool a large upload.
                return JSONResponse({"detail": f"this token's role ({role}) may not do this; it needs {needed}"}, 403)
        length = _content_length(scope)
        if length is not None and length > limit:
            return JSONResponse({"detail": f"request body over the limit of {limit} bytes"}, 413)
        if has_nul(scope):
            return JSONResponse({"detail": "NUL characters are not allowed in the path or query string"}, 422)
        return None


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
