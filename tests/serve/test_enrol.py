"""Enrolment without retraining over HTTP: a held-out SKU becomes recognisable and survives a restart."""

from __future__ import annotations

import pytest

from tests.conftest import GROCERY
from tests.serve.conftest import (
    BUNDLE_SKUS,
    DEVICE_TOKEN,
    HELD_OUT,
    REVIEWER_TOKEN,
    grocery_rows,
    held_out_paths,
    image_bytes,
)

pytestmark = pytest.mark.slow
# The small test bundle certifies no threshold (NEVER_ACCEPT everywhere: too few held-out
# predictions), so enrolled SKUs get a configured one; on a full bundle the category/global
# back-off applies (see docs/service.md).
ENROL_THRESHOLD = 0.9


def _bands(client, paths) -> list[dict]:
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    r = client.post("/v1/recognize/batch", files=files)
    assert r.status_code == 200, r.text
    return r.json()["events"]


def test_enrol_held_out_sku_then_restart(make_server, tmp_path):
    data_dir = tmp_path / "data"
    srv = make_server(data_dir, enrol_threshold=ENROL_THRESHOLD)
    train = held_out_paths("train")
    enrol_paths = held_out_paths("reference") + train[:8]
    probe = held_out_paths("val") + train[20:30]
    with srv.client(DEVICE_TOKEN) as dev, srv.client(REVIEWER_TOKEN) as rev:
        before = _bands(dev, probe)
        assert all(e["band"] in {"unknown", "verify"} for e in before)
        assert all(e["sku"] != HELD_OUT for e in before)
        # Two review items resolved as the new product join the reference shots.
        items = [dev.post("/v1/recognize", files={"file": ("x.jpg", p.read_bytes())}).json() for p in train[10:12]]
        for it in items:
            r = rev.post(f"/v1/review/{it['event_id']}/resolve",
                         json={"decision": "new_product", "proposed_sku": HELD_OUT})
            assert r.status_code == 200, r.text
        # Bad enrolments are refused and change nothing.
        assert rev.post("/v1/catalogue/enrol", data={"sku": "Banana"},
                        files={"files": ("a.jpg", image_bytes())}).status_code == 409
        assert rev.post("/v1/catalogue/enrol", data={"sku": HELD_OUT}, files={"x": ("a", b"")}).status_code == 422
        assert rev.post("/v1/catalogue/enrol", data={"sku": "<b>bad</b>"},
                        files={"files": ("a.jpg", image_bytes())}).status_code == 422
        assert rev.post("/v1/catalogue/enrol", data={"sku": HELD_OUT},
                        files={"files": ("a.jpg", b"not an image")}).status_code == 422
        assert rev.post("/v1/catalogue/enrol", data={"sku": "Other", "event_ids": items[0]["event_id"]},
                        files={"files": ("a.jpg", image_bytes())}).status_code == 422
        r = rev.post(
            "/v1/catalogue/enrol",
            data={"sku": HELD_OUT, "category": "Oat-Milk", "event_ids": [it["event_id"] for it in items]},
            files=[("files", (p.name, p.read_bytes(), "image/jpeg")) for p in enrol_paths],
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["n_images"] == len(enrol_paths) + 2
        assert body["threshold"] == ENROL_THRESHOLD and body["n_skus"] == len(BUNDLE_SKUS) + 1
        after = _bands(dev, probe)
        accepted = sum(e["band"] == "accept" and e["sku"] == HELD_OUT for e in after)
        assert accepted > len(probe) / 2, [(e["band"], e["sku"], e["confidence"]) for e in after]
        # The catalogue's own SKUs are not swallowed by the new one.
        known = [GROCERY / r["path"] for s in BUNDLE_SKUS for r in grocery_rows("val", s)[:3]]
        stolen = sum(e["sku"] == HELD_OUT for e in _bands(dev, known))
        assert stolen <= 1
        cat = dev.get("/v1/catalogue").json()
        assert {s["sku"]: s["enrolled"] for s in cat["skus"]}[HELD_OUT] is True
        assert rev.get(f"/v1/catalogue/{HELD_OUT}/image").status_code == 200
        assert f'sku="{HELD_OUT}"' in dev.get("/metrics").text
    srv.stop()

    # A new process on the same database and data dir re-applies the enrolment.
    srv2 = make_server(data_dir, enrol_threshold=ENROL_THRESHOLD)
    with srv2.client(DEVICE_TOKEN) as dev:
        cat = dev.get("/v1/catalogue").json()
        assert {s["sku"]: s["enrolled"] for s in cat["skus"]}.get(HELD_OUT) is True
        again = _bands(dev, probe)
        assert [e["sku"] for e in again] == [e["sku"] for e in after]
        assert [e["band"] for e in again] == [e["band"] for e in after]


def test_enrolled_sku_backs_off_to_router_threshold(make_server):
    srv = make_server()
    with srv.client(REVIEWER_TOKEN) as rev:
        r = rev.post("/v1/catalogue/enrol", data={"sku": HELD_OUT, "category": "Milk"},
                     files={"files": ("a.jpg", held_out_paths("reference")[0].read_bytes())})
        assert r.status_code == 200, r.text
        # Category Milk is known to the router: the SKU inherits its threshold.
        from skuscale.bundle import Bundle

        table = Bundle.load(srv.app.state.settings.bundle).model.router.sku_thresholds
        assert r.json()["threshold"] == pytest.approx(table.per_category["Milk"])
        r = rev.post("/v1/catalogue/enrol", data={"sku": "Some-New-Thing"},
                     files={"files": ("a.jpg", held_out_paths("train")[0].read_bytes())})
        assert r.json()["threshold"] == pytest.approx(table.global_)
