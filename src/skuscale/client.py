"""A small client for the skuscale recognition service.

Downstream systems must never commit state from a pending label: they act on an
event only once it is ``final`` (accepted at once, or resolved by a reviewer), by
polling with :meth:`Client.wait_final` or by receiving the ``event.finalized``
webhook, whose signature :func:`verify_signature` checks.

Example
-------
>>> client = Client("http://127.0.0.1:8000", token="...")            # doctest: +SKIP
>>> event = client.recognize("shelf.jpg")                            # doctest: +SKIP
>>> if event["status"] != "final":                                   # doctest: +SKIP
...     event = client.wait_final(event["event_id"], timeout=300)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from pathlib import Path
from typing import Any

SIGNATURE_HEADER = "X-Skuscale-Signature"


def sign_body(secret: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of the raw body under the webhook secret>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, signature: str | None) -> bool:
    """True when ``signature`` (the ``X-Skuscale-Signature`` header) matches ``body``; constant-time."""
    if not signature:
        return False
    # As bytes: compare_digest refuses non-ASCII str, and the sender controls this header.
    presented = signature.strip().encode("utf-8", "surrogateescape")
    return hmac.compare_digest(sign_body(secret, body).encode(), presented)


class ServiceError(RuntimeError):
    """A non-2xx answer from the service."""

    def __init__(self, status_code: int, detail: Any):
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class Client:
    """HTTP client of the ``/v1`` API (needs ``httpx``).

    Parameters
    ----------
    base_url : str
        E.g. ``http://127.0.0.1:8000``.
    token : str, optional
        Bearer token (``device`` or ``reviewer``).
    timeout : float
        Per-request timeout in seconds.
    """

    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 30.0):
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = float(timeout)
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _json(self, resp) -> Any:
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail")
            except ValueError:
                detail = resp.text
            raise ServiceError(resp.status_code, detail)
        return resp.json()

    def recognize(self, image: str | os.PathLike | bytes, *, filename: str = "image.jpg") -> dict[str, Any]:
        """Recognise one image (a path or encoded bytes); returns the event."""
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        return self._json(self._http.post("/v1/recognize", files={"file": (filename, data, "image/jpeg")}))

    def event(self, event_id: str) -> dict[str, Any]:
        return self._json(self._http.get(f"/v1/events/{event_id}"))

    def wait_final(self, event_id: str, timeout: float, *, poll_s: float = 1.0) -> dict[str, Any]:
        """Poll until the event is ``final``; raises :class:`TimeoutError` when it is still pending.

        No poll outlasts the deadline, and a poll that times out, cannot connect or
        gets a 5xx is retried until then.
        """
        import httpx

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                resp = self._http.get(f"/v1/events/{event_id}", timeout=max(0.05, min(self._timeout, left)))
                if resp.status_code < 500:
                    ev = self._json(resp)
                    if ev["status"] == "final":
                        return ev
            except (httpx.TimeoutException, httpx.TransportError):
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"event {event_id} is still pending after {timeout} s")
            time.sleep(min(poll_s, left))

    def resolve(self, event_id: str, decision: str, sku: str | None = None) -> dict[str, Any]:
        """Resolve a review item: ``decision`` is ``sku``, ``new_product`` or ``not_a_product``."""
        body: dict[str, Any] = {"decision": decision}
        if decision == "sku":
            body["sku"] = sku
        elif decision == "new_product":
            body["proposed_sku"] = sku
        return self._json(self._http.post(f"/v1/review/{event_id}/resolve", json=body))

    def feedback(self, event_id: str, sku: str | None = None, *, not_a_product: bool = False) -> dict[str, Any]:
        return self._json(
            self._http.post("/v1/feedback", json={"event_id": event_id, "sku": sku, "not_a_product": not_a_product})
        )
