"""Auth roles and every kind of bad input: a clear 4xx, and the service stays healthy."""

from __future__ import annotations

import io

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
            assert "image 1" in r.json()["detail"]
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
