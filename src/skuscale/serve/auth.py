"""Bearer-token authentication with two roles: ``device`` recognises, ``reviewer`` does everything.

Configuration holds only sha256 digests of the tokens. The presented token is hashed
and compared with every configured digest in constant time (:func:`hmac.compare_digest`),
without stopping at the first match.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from fastapi import HTTPException, Request

from skuscale.serve.settings import hash_token

ROLE_RANK = {"device": 1, "reviewer": 2}
COOKIE = "skuscale_token"


def identify(token: str | None, token_hashes: dict[str, str]) -> tuple[str, str] | None:
    """``(role, principal)`` of a token, or None; ``principal`` is a short digest prefix for audit."""
    if not token:
        return None
    presented = hash_token(token)
    found = None
    for digest, role in token_hashes.items():
        if hmac.compare_digest(presented, digest):
            found = (role, digest[:12])
    return found


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    # The review page logs in once and then rides on a SameSite=Strict, HttpOnly cookie.
    token = request.cookies.get(COOKIE) or None
    if token is not None and request.method not in SAFE_METHODS and not _same_origin(request):
        # SameSite does not cover sibling subdomains or other ports of the host: a cookie
        # alone must not change state from a page the service did not serve.
        return None
    return token


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _same_origin(request: Request) -> bool:
    """Whether a browser says the request comes from the service's own pages."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site == "same-origin"
    origin = request.headers.get("origin")
    if origin is None:
        return False
    # A proxy may rewrite Host; the host the browser saw then arrives as X-Forwarded-Host (a
    # cross-site form cannot set that header without a CORS preflight, which is never granted).
    forwarded = request.headers.get("x-forwarded-host", "").split(",")[0].strip()
    return urlsplit(origin).netloc in {request.headers.get("host"), forwarded} - {None, ""}


def require(role: str):
    """FastAPI dependency: 401 without a valid token, 403 when its role is too low."""

    def dependency(request: Request) -> str:
        settings = request.app.state.settings
        who = identify(bearer_token(request), settings.tokens)
        if who is None:
            raise HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
        if ROLE_RANK[who[0]] < ROLE_RANK[role]:
            raise HTTPException(403, f"this token's role ({who[0]}) may not do this; it needs {role}")
        return who[1]

    dependency.required_role = role  # read by the request guard, to answer 403 before the body
    return dependency
