"""Webhook delivery from the database outbox: at least once, signed, with exponential back-off.

Messages are written to the ``outbox`` table in the same transaction as the change
they report, so a crash can delay a delivery but never lose it. A worker thread
claims due messages with a short lease (several processes may run one), POSTs them
and records the outcome. Receivers de-duplicate on the ``Idempotency-Key`` header.
"""

from __future__ import annotations

import logging
import threading

import httpx

from skuscale.client import SIGNATURE_HEADER, sign_body
from skuscale.serve import repository as repo

log = logging.getLogger(__name__)


class OutboxWorker:
    """Background thread delivering outbox messages.

    Parameters
    ----------
    sessionmaker : sessionmaker
    settings : ServeSettings
    on_result : callable, optional
        Called with ``"delivered"``, ``"retry"`` or ``"failed"`` after each attempt (metrics).
    """

    def __init__(self, sessionmaker, settings, on_result=None):
        self.sessionmaker = sessionmaker
        self.settings = settings
        self.on_result = on_result or (lambda result: None)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="skuscale-outbox", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        s = self.settings
        with httpx.Client(timeout=s.webhook_timeout_s, follow_redirects=False) as client:
            while not self._stop.is_set():
                try:
                    busy = self.deliver_due(client)
                except Exception:  # the worker must outlive a database hiccup
                    log.exception("webhook outbox pass failed")
                    busy = False
                if not busy:
                    self._wake.wait(s.webhook_poll_s)
                    self._wake.clear()

    def deliver_due(self, client: httpx.Client, *, limit: int = 20) -> bool:
        """Deliver up to ``limit`` due messages; whether there were any.

        Each message is claimed just before its attempt, under a lease that covers one
        attempt: a batch claimed at once would outlive its lease behind a slow receiver,
        and another worker would send its later messages a second time.
        """
        delivered = 0
        while delivered < limit:
            with self.sessionmaker() as session:
                batch = repo.claim_deliveries(session, lease_s=self.settings.webhook_timeout_s + 30, limit=1)
            if not batch:
                break
            self._attempt(client, batch[0])
            delivered += 1
        return delivered > 0

    def _attempt(self, client: httpx.Client, d: repo.Delivery) -> None:
        s = self.settings
        body = d.body.encode()
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": d.idempotency_key,
            SIGNATURE_HEADER: sign_body(d.secret, body),
            "X-Skuscale-Delivery-Attempt": str(d.attempts + 1),
        }
        error = None
        try:
            resp = client.post(d.url, content=body, headers=headers)
            ok = 200 <= resp.status_code < 300
            if not ok:
                error = f"HTTP {resp.status_code}"
        except httpx.HTTPError as exc:
            ok, error = False, f"{type(exc).__name__}: {exc}"
        with self.sessionmaker() as session:
            status = repo.finish_delivery(
                session, d.id, ok=ok, error=error, backoff_s=s.webhook_backoff_s,
                backoff_max_s=s.webhook_backoff_max_s, max_attempts=s.webhook_max_attempts,
            )
        # A message whose webhook was deleted during the attempt ends "cancelled": no retry.
        self.on_result("delivered" if ok else ("retry" if status == "pending" else "failed"))
