"""Auth roles and every kind of bad input: a clear 4xx, and the service stays healthy."""

from __future__ import annotations

import io
import json
import select
import socket
import struct
import zlib

import pytest
from PIL import Image

from tests.serve.conftest import DEVICE_TOKEN, REVIEWER_TOKEN, image_bytes

pytestmark = pytest.mark.slow


def _post_image(c, data: bytes, url: str = "/v1/recognize"):
    return c.post(url, files={"file": ("x.jpg", data, "image/jpeg")})


def test_auth_no_token_wrong_token_wrong_role(server):
    data = image_bytes()
    with server.client() as anon, server.client("not-a-token") as wrong, server.client(DEVICE_TOKEN) as dev:
        r = _post_image(anon, data)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert _post_image(wrong, data).status_code == 401
        assert anon.get("/v1/review").status_code == 401
        assert wrong.get("/v1/review").status_code == 401
        r = anon.post("/v1/recognize", files={"file": ("x.jpg", data, "image/jpeg")},
                      headers={"Authorization": "Basic " + DEVICE_TOKEN})
        assert r.status_code == 401
        eid = _post_image(dev, data).json()["event_id"]
        # A device may recognise and read events, nothing else.
        assert dev.get(f"/v1/events/{eid}").status_code == 200
        assert dev.get("/v1/review").status_code == 403
        assert dev.post(f"/v1/review/{eid}/resolve", json={"decision": "not_a_product"}).status_code == 403
        assert dev.post("/v1/feedback", json={"event_id": eid, "sku": "Banana"}).status_code == 403
        assert dev.post("/v1/catalogue/enrol", data={"sku": "X"}, files={"files": ("a.jpg", data)}).status_code == 403
        assert dev.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/"}).status_code == 403
        assert dev.get(f"/v1/events/{eid}/image").status_code == 403
    with server.client(REVIEWER_TOKEN) as rev:
        assert _post_image(rev, data).status_code == 200  # a reviewer may do everything
        assert rev.get("/v1/review").status_code == 200


def _jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (120, 30, 200)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _png_bomb(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (w, h), 0).save(buf, "PNG", optimize=True)  # tiny file, huge pixel count
    return buf.getvalue()


def test_bad_images_get_clear_4xx_and_service_stays_healthy(make_server):
    srv = make_server(max_image_bytes=2_000_000, max_image_pixels=40_000_000)
    good = image_bytes()
    bomb = _png_bomb(8000, 6000)  # 48 MP
    assert len(bomb) < 100_000
    cases = {
        "empty": (b"", 422),
        "not an image": (b"this is not an image at all" * 10, 422),
        "truncated jpeg": (good[: len(good) // 2], 422),
        "too many bytes": (good + b"\0" * 2_000_000, 413),
        "decompression bomb": (bomb, 422),
    }
    with srv.client(DEVICE_TOKEN) as c:
        for name, (data, code) in cases.items():
            r = _post_image(c, data)
            assert r.status_code == code, (name, r.status_code, r.text)
            assert isinstance(r.json()["detail"], str) and r.json()["detail"], name
            r = c.post("/v1/recognize/batch", files=[("files", ("a.jpg", good)), ("files", ("b.jpg", data))])
            assert r.status_code == code, (name, "batch", r.text)
            assert r.json()["detail"].startswith("image 2 of 2 ('b.jpg')"), (name, r.text)
        # Wrong content type and missing field.
        r = c.post("/v1/recognize", content=good, headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 415
        r = c.post("/v1/recognize", json={"file": "x"})
        assert r.status_code == 415
        r = c.post("/v1/recognize", files={"image": ("x.jpg", good, "image/jpeg")})
        assert r.status_code == 422 and "file" in r.text
        r = c.post("/v1/recognize", data={"file": "just text"})  # form-urlencoded
        assert r.status_code == 415
        r = c.post("/v1/recognize", data={"file": "just text"}, files={"other": ("o.jpg", good)})
        assert r.status_code == 422
        # Nothing above left a review item behind, and the service still works.
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert _post_image(c, good).status_code == 200
        assert _post_image(c, _jpeg(64, 48)).status_code == 200
    with srv.client(REVIEWER_TOKEN) as rev:
        assert rev.get("/v1/review").json()["total"] == 2


def _png_header(width: int, height: int) -> bytes:
    """A PNG of a few bytes whose header claims ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_batch_errors_number_images_from_1_and_name_the_file(server):
    good = image_bytes()
    with server.client(DEVICE_TOKEN) as c:
        r = c.post("/v1/recognize/batch", files=[("files", ("bad.jpg", b"junk")), ("files", ("good.jpg", good))])
        assert r.status_code == 422
        assert r.json()["detail"].startswith("image 1 of 2 ('bad.jpg'): not a usable image: "), r.text
        # A long filename is cut short.
        r = c.post("/v1/recognize/batch", files=[("files", ("a.jpg", good)), ("files", ("n" * 300, b"junk"))])
        assert r.status_code == 422 and r.json()["detail"].startswith("image 2 of 2 ('" + "n" * 100 + "...')")
        # Over the service's pixel limit (40 MP) and over Pillow's own (89.5 MP): the service's limit is named.
        huge = _png_header(10_000, 10_000)
        r = c.post("/v1/recognize/batch", files=[("files", ("a.jpg", good)), ("files", ("huge.png", huge))])
        assert r.status_code == 422
        assert r.json()["detail"] == (
            "image 2 of 2 ('huge.png'): image is 10000x10000 = 100000000 pixels, over the limit of 40000000 pixels"
        )
        r = _post_image(c, _png_header(10_000, 10_000))
        assert r.status_code == 422 and "over the limit of 40000000 pixels" in r.json()["detail"], r.text
    with server.client(REVIEWER_TOKEN) as rev:
        assert rev.get("/v1/review").json()["total"] == 0  # all or nothing


def test_batch_limit(make_server):
    srv = make_server(max_batch=2)
    good = image_bytes()
    with srv.client(DEVICE_TOKEN) as c:
        r = c.post("/v1/recognize/batch", files=[("files", (f"{i}.jpg", good)) for i in range(3)])
        assert r.status_code == 413


def test_default_limits_are_10_mb_and_40_mp():
    from skuscale.serve.settings import ServeSettings

    s = ServeSettings(bundle="x")
    assert s.max_image_bytes == 10 * 1024 * 1024 and s.max_image_pixels == 40_000_000


def test_token_keys_must_be_hashes():
    from pydantic import ValidationError

    from skuscale.serve.settings import ServeSettings

    with pytest.raises(ValidationError):
        ServeSettings(bundle="x", tokens={"plain-token": "device"})


# ------------------------------------------------------------------------- bodies before auth and size checks
def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _answer_before_body_ends(server, head: str, chunks=(), *, wait: float = 10.0) -> tuple[int | None, int]:
    """Send a request head, then body pieces until the server answers; never finish the body.

    Returns the answer's status (None if none came within ``wait`` seconds: the server is
    still waiting for the body) and how many body bytes were sent.
    """
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=wait)
    try:
        sock.sendall(head.encode())
        sent = 0
        for piece in chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # answered already
            try:
                sock.settimeout(2.0)
                sock.sendall(piece)
            except OSError:  # the server stopped reading (or closed): its answer is what counts
                break
            sent += len(piece)
        sock.settimeout(wait)
        try:
            data = sock.recv(4096)
        except TimeoutError:
            return None, sent
        except ConnectionResetError:
            data = b""
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None
        return status, sent
    finally:
        sock.close()


MULTIPART_HEAD = (
    b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n"
    b"Content-Type: image/jpeg\r\n\r\n"
)


def _head(path: str, headers: dict[str, str]) -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return "\r\n".join(lines) + "\r\n\r\n"


def test_unauthenticated_requests_are_refused_before_their_body_is_read(server):
    multipart = {"Content-Type": "multipart/form-data; boundary=xyz"}
    # A chunked upload (no Content-Length) to an image route: answered after its first chunk.
    head = _head("/v1/recognize", {**multipart, "Transfer-Encoding": "chunked"})
    status, _ = _answer_before_body_ends(server, head, [_chunk(MULTIPART_HEAD + b"\0" * 65536)])
    assert status == 401, "the server waited for the body of an unauthenticated upload"
    # A 400 MB JSON body to a JSON route, and a wrong token: answered with the body unsent.
    head = _head("/v1/feedback", {"Content-Type": "application/json", "Content-Length": str(400 << 20)})
    assert _answer_before_body_ends(server, head, [b'{"event_id": "' + b"a" * 1024])[0] == 401
    head = _head("/v1/catalogue/enrol", {**multipart, "Content-Length": str(300 << 20),
                                         "Authorization": "Bearer not-a-token"})
    assert _answer_before_body_ends(server, head, [MULTIPART_HEAD])[0] == 401
    # Open routes and unknown paths are not affected.
    with server.client() as anon:
        assert anon.get("/healthz").status_code == 200
        assert anon.post("/v1/no-such-route", content=b"x").status_code == 404
        r = anon.post("/v1/feedback", json={"event_id": "x", "sku": "Banana"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


def test_bodies_are_capped_as_they_arrive(make_server):
    srv = make_server(max_image_bytes=100_000)
    megabyte = [_chunk(b"\0" * 65536)] * 32
    # Chunked, so no Content-Length to check: the byte count as the body arrives stops it.
    head = _head("/v1/recognize", {"Content-Type": "multipart/form-data; boundary=xyz",
                                   "Transfer-Encoding": "chunked", "Authorization": f"Bearer {DEVICE_TOKEN}"})
    status, sent = _answer_before_body_ends(srv, head, [_chunk(MULTIPART_HEAD), *megabyte * 2])
    assert status == 413, f"no 413 after {sent} bytes of a 100 kB-image route"
    head = _head("/v1/feedback", {"Content-Type": "application/json", "Transfer-Encoding": "chunked",
                                  "Authorization": f"Bearer {REVIEWER_TOKEN}"})
    status, sent = _answer_before_body_ends(srv, head, [_chunk(b'{"event_id": "'), *megabyte * 2])
    assert status == 413, f"no 413 after {sent} bytes of JSON"
    # A JSON route's declared Content-Length over 1 MiB is refused before any byte is sent.
    head = _head("/v1/feedback", {"Content-Type": "application/json", "Content-Length": str(2 << 20),
                                  "Authorization": f"Bearer {REVIEWER_TOKEN}"})
    assert _answer_before_body_ends(srv, head)[0] == 413
    with srv.client(REVIEWER_TOKEN) as rev:
        r = rev.post("/v1/webhooks", content=b'{"url": "' + b"a" * (2 << 20) + b'"}',
                     headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "limit" in r.json()["detail"]
        # Normal requests still work, and nothing was stored.
        assert rev.post("/v1/recognize", files={"file": ("x.jpg", _jpeg(64, 48))}).status_code == 200
        assert rev.get("/v1/review").json()["total"] == 1 and rev.get("/readyz").status_code == 200


# ------------------------------------------------------------------------- text a database cannot store
def test_nul_and_unpaired_surrogates_get_422_and_store_nothing(server):
    with server.client(DEVICE_TOKEN) as dev, server.client(REVIEWER_TOKEN) as rev:
        eid = dev.post("/v1/recognize", files={"file": ("x.jpg", image_bytes())}).json()["event_id"]
        hook = {"url": "http://127.0.0.1:9/hook"}
        requests = [
            ("GET", "/v1/events/%00", None),
            ("GET", "/v1/events/%00/image", None),
            ("GET", "/v1/review?sku=%00", None),
            ("GET", "/v1/review?category=a%00b", None),
            ("GET", "/v1/catalogue/a%00/image", None),
            ("DELETE", "/v1/webhooks/%00", None),
            ("POST", "/v1/review/%00/resolve", {"decision": "not_a_product"}),
            ("POST", f"/v1/review/{eid}/resolve", {"decision": "sku", "sku": "Ban\x00"}),
            ("POST", f"/v1/review/{eid}/resolve", {"decision": "\udc80"}),  # echoed in the 422
            ("POST", "/v1/feedback", {"event_id": eid, "sku": "a\x00b"}),
            ("POST", "/v1/feedback", {"event_id": "\x00", "sku": "Banana"}),
            ("POST", "/v1/feedback", {"event_id": eid, "sku": "Banana", "source": "x\x00"}),
            ("POST", "/v1/feedback", {"event_id": eid, "sku": "\ud800"}),
            ("POST", "/v1/feedback", {"event_id": eid, "sku": "Banana", "source": "\udfff"}),
            ("POST", "/v1/webhooks", {**hook, "secret": "s" * 16 + "\x00"}),
            ("POST", "/v1/webhooks", {**hook, "secret": "s" * 16 + "\ud800"}),
        ]
        for method, url, body in requests:
            # json.dumps escapes an unpaired surrogate as \\ud800, as any JSON client may send it.
            content = None if body is None else json.dumps(body)
            r = rev.request(method, url, content=content, headers={"Content-Type": "application/json"})
            assert r.status_code == 422, (method, url, body, r.status_code, r.text)
        r = rev.post("/v1/catalogue/enrol", data={"sku": "New-One", "event_ids": ["\x00"]},
                     files={"files": ("a.jpg", image_bytes())})
        assert r.status_code == 422, r.text
        r = rev.get("/review?sku=%00", headers={"Cookie": f"skuscale_token={REVIEWER_TOKEN}"})
        assert r.status_code == 422
        # Nothing was stored, and the service is healthy.
        assert rev.get("/v1/review").json()["total"] == 1
        assert rev.get(f"/v1/events/{eid}").json()["status"] == "pending"
        assert rev.get("/v1/webhooks").json()["webhooks"] == []
        assert "New-One" not in {s["sku"] for s in rev.get("/v1/catalogue").json()["skus"]}
        assert rev.post("/v1/feedback", json={"event_id": eid, "sku": "Banana"}).status_code == 200
        assert rev.get("/readyz").status_code == 200


def test_out_of_range_offset_gets_422(server):
    with server.client(REVIEWER_TOKEN) as rev:
        for offset in (2**63, 2**31, -1):
            r = rev.get(f"/v1/review?offset={offset}")
            assert r.status_code == 422, (offset, r.text)
        r = rev.get(f"/v1/review?offset={2**31 - 1}&status=all")
        assert r.status_code == 200 and r.json()["items"] == []


def test_webhook_url_longer_than_its_column_gets_422(server):
    with server.client(REVIEWER_TOKEN) as rev:
        base = "http://example.com/"
        for n in (2001, 2083):
            r = rev.post("/v1/webhooks", json={"url": base + "a" * (n - len(base))})
            assert r.status_code == 422, (n, r.text)
        r = rev.post("/v1/webhooks", json={"url": base + "a" * (2000 - len(base))})
        assert r.status_code == 201 and len(r.json()["url"]) == 2000
        assert len(rev.get("/v1/webhooks").json()["webhooks"]) == 1
        assert rev.get("/readyz").status_code == 200


def test_a_value_the_database_refuses_gets_422(server, monkeypatch):
    """The safety net behind the validation: a DataError (e.g. PostgreSQL refusing a value) is the request's fault."""
    from sqlalchemy.exc import DataError

    from skuscale.serve import repository as repo

    def refuse(*args, **kwargs):
        raise DataError("SELECT ...", {}, ValueError("value too long for type character varying(32)"))

    monkeypatch.setattr(repo, "list_review", refuse)
    with server.client(REVIEWER_TOKEN) as rev:
        r = rev.get("/v1/review")
        assert r.status_code == 422 and "database" in r.json()["detail"]
        monkeypatch.undo()
        assert rev.get("/v1/review").status_code == 200


def test_a_device_token_is_refused_before_it_uploads_to_a_reviewer_route(server):
    head = _head("/v1/catalogue/enrol", {"Content-Type": "multipart/form-data; boundary=xyz",
                                         "Content-Length": str(300 << 20), "Authorization": f"Bearer {DEVICE_TOKEN}"})
    assert _answer_before_body_ends(server, head, [MULTIPART_HEAD])[0] == 403
    # The device's own routes still read their bodies.
    with server.client(DEVICE_TOKEN) as dev:
        assert dev.post("/v1/recognize", files={"file": ("x.jpg", image_bytes())}).status_code == 200


def test_the_guard_sees_paths_as_routing_does_under_a_root_path(server):
    """Behind a proxy prefix (uvicorn --root-path) the caps and the early 401 still apply per route."""
    import asyncio

    app = server.app
    read = []

    async def call(path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> int:
        sent = []

        async def receive():
            read.append(path)
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "root_path": "/api", "path": "/api" + path, "raw_path": b"/api" + path.encode(),
                 "query_string": b"", "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
                 "app": app}
        await app(scope, receive, send)
        return next(m["status"] for m in sent if m["type"] == "http.response.start")

    big = str(300 << 20).encode()
    assert asyncio.run(call("/v1/feedback", [(b"content-length", big)], b"")) == 401
    assert read == []  # answered before the body
    # An image route's cap is the image cap, not the 1 MiB of JSON routes.
    headers = [(b"content-length", str(2 << 20).encode()), (b"authorization", f"Bearer {DEVICE_TOKEN}".encode()),
               (b"content-type", b"multipart/form-data; boundary=xyz")]
    assert asyncio.run(call("/v1/recognize", headers, MULTIPART_HEAD)) != 413


def test_the_review_cookie_alone_does_not_change_state_from_another_page(server):
    """SameSite does not cover sibling subdomains or other ports: unsafe methods need the service's own pages."""
    import httpx

    files = {"files": ("a.jpg", image_bytes())}
    with httpx.Client(base_url=server.url, cookies={"skuscale_token": REVIEWER_TOKEN}) as browser:
        # A form posted from elsewhere (no Sec-Fetch-Site: same-origin, foreign Origin, or none at all).
        for headers in ({"Sec-Fetch-Site": "same-site"}, {"Origin": "http://evil.example:8000"}, {}):
            r = browser.post("/v1/catalogue/enrol", data={"sku": "Csrf-Sku"}, files=files, headers=headers)
            assert r.status_code == 401, (headers, r.text)
        assert browser.get("/v1/catalogue").status_code == 200  # reading with the cookie is fine
        # Behind a proxy that rewrites Host, the browser's host arrives as X-Forwarded-Host.
        r = browser.post("/v1/review/no-such-event/resolve", json={"decision": "not_a_product"},
                         headers={"Origin": "https://review.example.com", "X-Forwarded-Host": "review.example.com"})
        assert r.status_code == 404, r.text  # authenticated; the event just does not exist
        # The review page's own fetch calls carry Sec-Fetch-Site: same-origin.
        r = browser.post("/v1/catalogue/enrol", data={"sku": "Page-Sku"}, files=files,
                         headers={"Sec-Fetch-Site": "same-origin"})
        assert r.status_code == 200, r.text
        names = {s["sku"] for s in browser.get("/v1/catalogue").json()["skus"]}
        assert "Page-Sku" in names and "Csrf-Sku" not in names


def test_signature_check_refuses_odd_headers_without_raising():
    from skuscale.client import sign_body, verify_signature

    body = b'{"a": 1}'
    assert verify_signature("s3cret-s3cret", body, sign_body("s3cret-s3cret", body))
    for bad in ("sha256=\u00e9", "sha256=\udcff", "", None, "sha256=" + "0" * 64):
        assert verify_signature("s3cret-s3cret", body, bad) is False


def test_wait_final_keeps_its_deadline_when_the_server_hangs():
    import socket
    import time

    from skuscale.client import Client

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections, never answers
    try:
        with Client(f"http://127.0.0.1:{listener.getsockname()[1]}", token="t", timeout=30) as api:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                api.wait_final("abc", timeout=1.0, poll_s=0.2)
            assert time.monotonic() - started < 3.0
    finally:
        listener.close()
