"""event.finalized webhooks from the outbox: signed, at least once, retried, surviving a restart."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import sqlalchemy as sa

from skuscale.client import SIGNATURE_HEADER, verify_signature
from skuscale.serve.db import OutboxMessage
from tests.serve.conftest import DEVICE_TOKEN, REVIEWER_TOKEN, _free_port, image_bytes

pytestmark = pytest.mark.slow
SECRET = "webhook-secret-for-tests-0123456789"


class Receiver:
    """A loopback HTTP receiver that fails the first ``fail_first`` requests with 500."""

    def __init__(self, port: int | None = None, fail_first: int = 0):
        self.requests: list[dict] = []
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                failing = len(receiver.requests) < receiver.fail_first
                status = 500 if failing else 200
                receiver.requests.append({"body": body, "headers": dict(self.headers), "status": status})
                self.send_response(500 if failing else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port or 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def delivered(self) -> list[dict]:
        return [r for r in self.requests if r["status"] == 200]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _wait(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_resolution_delivers_exactly_one_signed_message_despite_failures(server):
    receiver = Receiver(fail_first=2)
    try:
        with server.client(DEVICE_TOKEN) as dev, server.client(REVIEWER_TOKEN) as rev:
            r = rev.post("/v1/webhooks", json={"url": receiver.url, "secret": SECRET})
            assert r.status_code == 201 and r.json()["secret"] == SECRET
            ev = dev.post("/v1/recognize", files={"file": ("x.jpg", image_bytes())}).json()
            assert ev["band"] == "verify" or ev["band"] == "unknown"
            time.sleep(0.5)
            assert receiver.requests == []  # pending events are never announced
            r = rev.post(f"/v1/review/{ev['event_id']}/resolve", json={"decision": "sku", "sku": "Banana"})
            assert r.status_code == 200
            assert _wait(lambda: receiver.delivered())
            time.sleep(1.0)  # nothing more may arrive
        assert len(receiver.requests) == 3 and len(receiver.delivered()) == 1
        keys = {req["headers"]["Idempotency-Key"] for req in receiver.requests}
        assert keys == {f"{ev['event_id']}.finalized"}
        for req in receiver.requests:
            assert verify_signature(SECRET, req["body"], req["headers"][SIGNATURE_HEADER])
            assert not verify_signature("wrong-secret", req["body"], req["headers"][SIGNATURE_HEADER])
        msg = json.loads(receiver.delivered()[0]["body"])
        assert msg["type"] == "event.finalized" and msg["event_id"] == ev["event_id"]
        assert msg["status"] == "final" and msg["sku"] == "Banana" and msg["resolution"] == "sku"
        attempts = [int(req["headers"]["X-Skuscale-Delivery-Attempt"]) for req in receiver.requests]
        assert attempts == [1, 2, 3]
        with server.client() as c:
            text = c.get("/metrics").text
            assert 'skuscale_webhook_deliveries_total{result="retry"} 2.0' in text
            assert 'skuscale_webhook_deliveries_total{result="delivered"} 1.0' in text
    finally:
        receiver.close()


def test_outbox_survives_restart(make_server, tmp_path):
    port = _free_port()  # nothing listens here yet: deliveries fail and are retried
    data_dir = tmp_path / "data"
    srv = make_server(data_dir)
    with srv.client(DEVICE_TOKEN) as dev, srv.client(REVIEWER_TOKEN) as rev:
        rev.post("/v1/webhooks", json={"url": f"http://127.0.0.1:{port}/hook", "secret": SECRET})
        ev = dev.post("/v1/recognize", files={"file": ("x.jpg", image_bytes())}).json()
        assert rev.post(f"/v1/review/{ev['event_id']}/resolve", json={"decision": "not_a_product"}).status_code == 200
        time.sleep(0.5)
    srv.stop()
    receiver = Receiver(port=port)
    try:
        make_server(data_dir, webhook_backoff_s=0.1)
        assert _wait(lambda: receiver.delivered())
        time.sleep(0.5)
        assert len(receiver.delivered()) == 1
        msg = json.loads(receiver.delivered()[0]["body"])
        assert msg["event_id"] == ev["event_id"] and msg["resolution"] == "not_a_product"
        assert verify_signature(SECRET, receiver.delivered()[0]["body"],
                                receiver.delivered()[0]["headers"][SIGNATURE_HEADER])
    finally:
        receiver.close()


def test_accepted_event_is_final_at_once_and_announced(make_server):
    from tests.serve.conftest import HELD_OUT, held_out_paths

    srv = make_server(enrol_threshold=0.9)
    receiver = Receiver()
    try:
        with srv.client(DEVICE_TOKEN) as dev, srv.client(REVIEWER_TOKEN) as rev:
            rev.post("/v1/webhooks", json={"url": receiver.url, "secret": SECRET})
            paths = held_out_paths("reference") + held_out_paths("train")[:8]
            r = rev.post("/v1/catalogue/enrol", data={"sku": HELD_OUT},
                         files=[("files", (p.name, p.read_bytes())) for p in paths])
            assert r.status_code == 200
            accepted = None
            for p in held_out_paths("val"):
                ev = dev.post("/v1/recognize", files={"file": ("x.jpg", p.read_bytes())}).json()
                if ev["band"] == "accept":
                    accepted = ev
                    break
            assert accepted is not None
            assert accepted["status"] == "final" and accepted["final_sku"] == HELD_OUT
            assert accepted["resolution"] == "accepted"
            assert _wait(lambda: any(json.loads(q["body"])["event_id"] == accepted["event_id"]
                                     for q in receiver.delivered()))
            msg = next(json.loads(q["body"]) for q in receiver.delivered()
                       if json.loads(q["body"])["event_id"] == accepted["event_id"])
            assert msg["resolution"] == "accepted" and msg["sku"] == HELD_OUT
            # An accepted event cannot be resolved, but a cashier can still correct it.
            r = rev.post(f"/v1/review/{accepted['event_id']}/resolve", json={"decision": "sku", "sku": "Banana"})
            assert r.status_code == 409
            r = rev.post("/v1/feedback", json={"event_id": accepted["event_id"], "sku": "Banana", "source": "till"})
            assert r.status_code == 200 and r.json()["outcome"] == "incorrect"
            assert f'skuscale_feedback_total{{outcome="incorrect",sku="{HELD_OUT}"}} 1.0' in dev.get("/metrics").text
    finally:
        receiver.close()


def test_deleted_webhook_gets_no_more_deliveries(make_server):
    srv = make_server(webhook_workers=False)  # deliveries are driven by hand below
    worker = srv.app.state.worker
    calls: list[str] = []

    def receive(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(500)  # every attempt fails, so every message stays due for a retry

    def resolve(dev, rev) -> None:
        ev = dev.post("/v1/recognize", files={"file": ("x.jpg", image_bytes())}).json()
        assert rev.post(f"/v1/review/{ev['event_id']}/resolve", json={"decision": "not_a_product"}).status_code == 200

    with httpx.Client(transport=httpx.MockTransport(receive)) as client, \
            srv.client(DEVICE_TOKEN) as dev, srv.client(REVIEWER_TOKEN) as rev:
        gone = rev.post("/v1/webhooks", json={"url": "http://receiver.invalid/gone"}).json()
        rev.post("/v1/webhooks", json={"url": "http://receiver.invalid/kept"})
        resolve(dev, rev)
        worker.deliver_due(client)
        assert sorted(calls) == ["/gone", "/kept"]  # both failed: retries are due in 0.2 s
        resolve(dev, rev)  # a second message for each, not tried yet
        r = rev.delete(f"/v1/webhooks/{gone['id']}")
        assert r.status_code == 200 and r.json()["active"] is False
        resolve(dev, rev)  # after the deletion: for the kept webhook only
        calls.clear()
        time.sleep(0.5)
        worker.deliver_due(client)
        assert sorted(calls) == ["/kept"] * 3, calls
        assert rev.delete("/v1/webhooks/no-such-hook").status_code == 404
    with srv.app.state.sessionmaker() as session:
        rows = session.execute(
            sa.select(OutboxMessage.webhook_id, OutboxMessage.status, OutboxMessage.attempts)
        ).all()
    gone_rows = [(status, attempts) for hook, status, attempts in rows if hook == gone["id"]]
    assert sorted(gone_rows) == [("cancelled", 0), ("cancelled", 1)]
    assert sum(hook != gone["id"] and status == "pending" for hook, status, _ in rows) == 3


def test_a_slow_receiver_gets_each_message_once_from_two_workers(make_server, monkeypatch):
    """A batch claimed at once outlived its lease behind a slow receiver; another worker re-sent it."""
    import datetime as dt

    import skuscale.serve.repository as repository
    from skuscale.serve.webhooks import OutboxWorker

    srv = make_server(webhook_workers=False)
    settings = srv.app.state.settings
    clock = [repository.utcnow()]
    monkeypatch.setattr(repository, "utcnow", lambda: clock[0])
    other = OutboxWorker(srv.app.state.sessionmaker, settings, on_result=lambda _r: None)
    keys: list[str] = []
    busy = [False]

    def receive(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["Idempotency-Key"])
        if not busy[0]:
            # This worker's receiver is slow: each attempt takes the whole timeout; the other one's is quick.
            clock[0] += dt.timedelta(seconds=settings.webhook_timeout_s + 1)
            busy[0] = True
            other.deliver_due(client)  # the other worker polls meanwhile
            busy[0] = False
        return httpx.Response(200)

    with httpx.Client(transport=httpx.MockTransport(receive)) as client, \
            srv.client(DEVICE_TOKEN) as dev, srv.client(REVIEWER_TOKEN) as rev:
        rev.post("/v1/webhooks", json={"url": "http://receiver.invalid/hook"})
        for _ in range(12):
            ev = dev.post("/v1/recognize", files={"file": ("x.jpg", image_bytes())}).json()
            assert rev.post(f"/v1/review/{ev['event_id']}/resolve",
                            json={"decision": "not_a_product"}).status_code == 200
        srv.app.state.worker.deliver_due(client)
    assert len(keys) == 12 and len(set(keys)) == 12, keys
