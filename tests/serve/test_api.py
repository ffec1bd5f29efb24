"""The recognition API over real HTTP: recognise, review queue, resolve, feedback, metrics."""

from __future__ import annotations

import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serve.conftest import BUNDLE_SKUS, DEVICE_TOKEN, REVIEWER_TOKEN, image_bytes

pytestmark = pytest.mark.slow


def metric_samples(client, name: str) -> dict[tuple, float]:
    text = client.get("/metrics").text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def recognize(client, data: bytes, name: str = "x.jpg") -> dict:
    r = client.post("/v1/recognize", files={"file": (name, data, "image/jpeg")})
    assert r.status_code == 200, r.text
    return r.json()


def test_recognize_returns_band_and_top5(server):
    with server.client(DEVICE_TOKEN) as c:
        ev = recognize(c, image_bytes("val", "Banana", 0))
    assert ev["band"] in {"accept", "verify", "unknown"}
    assert ev["sku"] in BUNDLE_SKUS
    assert 0.0 <= ev["confidence"] <= 1.0
    assert isinstance(ev["ood_score"], float)
    assert len(ev["candidates"]) == 5
    assert ev["candidates"][0]["sku"] == ev["sku"]
    scores = [c["score"] for c in ev["candidates"]]
    assert scores == sorted(scores, reverse=True)
    assert ev["status"] == ("final" if ev["band"] == "accept" else "pending")
    assert len(ev["event_id"]) == 32


def test_batch_and_review_queue_filters_and_pagination(server):
    blobs = [image_bytes("val", sku, 0) for sku in BUNDLE_SKUS]
    with server.client(DEVICE_TOKEN) as dev, server.client(REVIEWER_TOKEN) as rev:
        files = [("files", (f"{i}.jpg", b, "image/jpeg")) for i, b in enumerate(blobs)]
        r = dev.post("/v1/recognize/batch", files=files)
        assert r.status_code == 200, r.text
        events = r.json()["events"]
        assert len(events) == len(blobs)
        pending = [e for e in events if e["status"] == "pending"]
        # This small bundle certifies no threshold, so every item goes to review.
        assert len(pending) == len(blobs)
        q = rev.get("/v1/review").json()
        assert q["total"] == len(pending)
        assert {i["event_id"] for i in q["items"]} == {e["event_id"] for e in pending}
        page1 = rev.get("/v1/review", params={"limit": 2, "offset": 0}).json()
        page2 = rev.get("/v1/review", params={"limit": 2, "offset": 2}).json()
        assert len(page1["items"]) == 2 and len(page2["items"]) == 2
        assert not {i["event_id"] for i in page1["items"]} & {i["event_id"] for i in page2["items"]}
        for band in ("verify", "unknown"):
            got = rev.get("/v1/review", params={"band": band}).json()
            assert got["total"] == sum(e["band"] == band for e in pending)
            assert all(i["band"] == band for i in got["items"])
        sku = pending[0]["sku"]
        got = rev.get("/v1/review", params={"sku": sku}).json()
        assert got["total"] == sum(e["sku"] == sku for e in pending) and all(i["sku"] == sku for i in got["items"])
        with_cat = [e for e in pending if e["category"]]
        if with_cat:
            cat = with_cat[0]["category"]
            got = rev.get("/v1/review", params={"category": cat}).json()
            assert got["total"] == sum(e["category"] == cat for e in pending)
        # The stored image is served back byte for byte (content-addressed store).
        img = rev.get(f"/v1/events/{pending[0]['event_id']}/image")
        assert img.status_code == 200 and img.content == blobs[0]
        assert img.headers["content-type"] == "image/jpeg"


def test_resolve_semantics_and_metrics(server):
    with server.client(DEVICE_TOKEN) as dev, server.client(REVIEWER_TOKEN) as rev:
        ev = recognize(dev, image_bytes("val", "Banana", 1))
        eid = ev["event_id"]
        before = metric_samples(rev, "skuscale_review_queue_depth")
        assert before[(("band", ev["band"]),)] == 1.0
        r = rev.post(f"/v1/review/{eid}/resolve", json={"decision": "sku", "sku": "No-Such-SKU"})
        assert r.status_code == 422 and "catalogue" in r.text
        r = rev.post(f"/v1/review/{eid}/resolve", json={"decision": "sku"})
        assert r.status_code == 422
        r = rev.post(f"/v1/review/{eid}/resolve", json={"decision": "maybe"})
        assert r.status_code == 422
        r = rev.post("/v1/review/" + "0" * 32 + "/resolve", json={"decision": "sku", "sku": "Banana"})
        assert r.status_code == 404
        r = rev.post(f"/v1/review/{eid}/resolve", json={"decision": "sku", "sku": "Banana"})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["status"] == "final" and out["final_sku"] == "Banana" and out["resolution"] == "sku"
        r = rev.post(f"/v1/review/{eid}/resolve", json={"decision": "sku", "sku": "Banana"})
        assert r.status_code == 409
        assert dev.get(f"/v1/events/{eid}").json()["status"] == "final"
        assert rev.get("/v1/review").json()["total"] == 0
        assert rev.get("/v1/review", params={"status": "final"}).json()["total"] == 1
        after = metric_samples(rev, "skuscale_review_queue_depth")
        assert after[(("band", ev["band"]),)] == 0.0
        correct = ev["sku"] == "Banana"
        acc = metric_samples(rev, "skuscale_sku_accuracy")
        assert acc[(("sku", ev["sku"]),)] == (1.0 if correct else 0.0)
        fb = metric_samples(rev, "skuscale_feedback_total")
        assert fb[(("outcome", "correct" if correct else "incorrect"), ("sku", ev["sku"]))] == 1.0
        rec = metric_samples(rev, "skuscale_recognitions_total")
        assert rec[(("band", ev["band"]), ("sku", ev["sku"]))] == 1.0


def test_new_product_and_not_a_product(server):
    with server.client(DEVICE_TOKEN) as dev, server.client(REVIEWER_TOKEN) as rev:
        a = recognize(dev, image_bytes("val", "Oatly-Oat-Milk", 0))["event_id"]
        b = recognize(dev, image_bytes("val", "Oatly-Oat-Milk", 1))["event_id"]
        r = rev.post(f"/v1/review/{a}/resolve", json={"decision": "new_product", "proposed_sku": "Banana"})
        assert r.status_code == 422  # already in the catalogue
        r = rev.post(f"/v1/review/{a}/resolve", json={"decision": "new_product", "proposed_sku": "<script>"})
        assert r.status_code == 422
        r = rev.post(f"/v1/review/{a}/resolve", json={"decision": "new_product", "proposed_sku": "Oat-Drink"})
        assert r.status_code == 200 and r.json()["proposed_sku"] == "Oat-Drink" and r.json()["final_sku"] is None
        r = rev.post(f"/v1/review/{b}/resolve", json={"decision": "not_a_product"})
        assert r.status_code == 200 and r.json()["resolution"] == "not_a_product"
        labels = {dict(k).get("sku") for k in metric_samples(rev, "skuscale_feedback_total")}
        assert "Oat-Drink" not in labels and labels <= set(BUNDLE_SKUS)


def test_two_reviewers_racing_exactly_one_wins(server):
    with server.client(DEVICE_TOKEN) as dev:
        eids = [recognize(dev, image_bytes("val", "Pink-Lady", i))["event_id"] for i in range(3)]
    for eid in eids:
        codes: list[int] = []
        barrier = threading.Barrier(4)

        def race(sku, eid=eid, barrier=barrier, codes=codes):
            with server.client(REVIEWER_TOKEN) as c:
                barrier.wait()
                codes.append(c.post(f"/v1/review/{eid}/resolve", json={"decision": "sku", "sku": sku}).status_code)

        skus = ("Pink-Lady", "Granny-Smith", "Banana", "Red-Beet")
        threads = [threading.Thread(target=race, args=(s,)) for s in skus]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(codes) == [200, 409, 409, 409]


def test_feedback_on_any_event(server):
    with server.client(DEVICE_TOKEN) as dev, server.client(REVIEWER_TOKEN) as rev:
        ev = recognize(dev, image_bytes("val", "Red-Beet", 0))
        other = next(s for s in BUNDLE_SKUS if s != ev["sku"])
        r = rev.post("/v1/feedback", json={"event_id": ev["event_id"], "sku": other, "source": "till-3"})
        assert r.status_code == 200 and r.json()["outcome"] == "incorrect"
        r = rev.post("/v1/feedback", json={"event_id": ev["event_id"], "sku": "free text that is no SKU"})
        assert r.status_code == 200
        r = rev.post("/v1/feedback", json={"event_id": ev["event_id"], "sku": ev["sku"]})
        assert r.status_code == 200 and r.json()["outcome"] == "correct"
        assert rev.post("/v1/feedback", json={"event_id": "f" * 32, "sku": "Banana"}).status_code == 404
        assert rev.post("/v1/feedback", json={"event_id": ev["event_id"]}).status_code == 422
        fb = metric_samples(rev, "skuscale_feedback_total")
        # The counter counts every feedback call; the accuracy counts the event once, with its latest label.
        assert fb[(("outcome", "incorrect"), ("sku", ev["sku"]))] == 2.0
        assert fb[(("outcome", "correct"), ("sku", ev["sku"]))] == 1.0
        assert metric_samples(rev, "skuscale_sku_accuracy")[(("sku", ev["sku"]),)] == 1.0
        assert metric_samples(rev, "skuscale_sku_accuracy_samples")[(("sku", ev["sku"]),)] == 1.0
        assert all(dict(k)["sku"] in BUNDLE_SKUS for k in fb)


def test_accuracy_counts_a_resolved_and_corrected_event_once_with_its_latest_label(make_server, tmp_path):
    data_dir = tmp_path / "relabel"
    srv = make_server(data_dir)
    with srv.client(DEVICE_TOKEN) as dev, srv.client(REVIEWER_TOKEN) as rev:
        ev = recognize(dev, image_bytes("val", "Banana", 0))
        sku, eid = ev["sku"], ev["event_id"]
        other = next(s for s in BUNDLE_SKUS if s != sku)
        # The reviewer confirms the prediction; later a cashier corrects it, and the till sends it twice.
        assert rev.post(f"/v1/review/{eid}/resolve", json={"decision": "sku", "sku": sku}).status_code == 200
        for _ in range(2):
            r = rev.post("/v1/feedback", json={"event_id": eid, "sku": other, "source": "till-1"})
            assert r.status_code == 200 and r.json()["outcome"] == "incorrect"
        fb = metric_samples(rev, "skuscale_feedback_total")
        assert fb[(("outcome", "correct"), ("sku", sku))] == 1.0
        assert fb[(("outcome", "incorrect"), ("sku", sku))] == 2.0
        assert metric_samples(rev, "skuscale_sku_accuracy_samples") == {(("sku", sku),): 1.0}
        assert metric_samples(rev, "skuscale_sku_accuracy") == {(("sku", sku),): 0.0}
    srv.stop()
    # After a restart the accuracy is seeded from the database: the same one event, the same latest label.
    again = make_server(data_dir)
    with again.client(REVIEWER_TOKEN) as rev:
        assert metric_samples(rev, "skuscale_sku_accuracy_samples") == {(("sku", sku),): 1.0}
        assert metric_samples(rev, "skuscale_sku_accuracy") == {(("sku", sku),): 0.0}


def test_operations_endpoints_are_open(server):
    with server.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["skus"] == len(BUNDLE_SKUS)
        text = c.get("/metrics").text
        assert "skuscale_bundle_info{" in text and 'n_skus="6"' in text
        assert "skuscale_request_duration_seconds_bucket" in text
        assert "skuscale_ood_score" in text
        assert c.get("/openapi.json").json()["paths"]["/v1/recognize"]
        cat = c.get("/v1/catalogue", headers={"Authorization": f"Bearer {DEVICE_TOKEN}"}).json()
        assert cat["n_skus"] == 6 and not any(s["enrolled"] for s in cat["skus"])


def test_client_recognize_and_wait_final(server, tmp_path):
    import time

    from skuscale.client import Client, ServiceError

    path = tmp_path / "item.jpg"
    path.write_bytes(image_bytes("val", "Banana", 2))
    with Client(server.url, token=DEVICE_TOKEN) as api, Client(server.url, token=REVIEWER_TOKEN) as reviewer:
        ev = api.recognize(path)
        assert ev["status"] == "pending"
        other = api.recognize(image_bytes("val", "Banana", 3))
        with pytest.raises(TimeoutError):
            api.wait_final(other["event_id"], timeout=0.3, poll_s=0.1)

        def resolve_later():
            time.sleep(0.5)
            reviewer.resolve(ev["event_id"], "sku", "Banana")

        t = threading.Thread(target=resolve_later)
        t.start()
        final = api.wait_final(ev["event_id"], timeout=20, poll_s=0.1)
        t.join()
        assert final["status"] == "final" and final["final_sku"] == "Banana"
        with pytest.raises(ServiceError) as err:
            api.resolve(other["event_id"], "not_a_product")
        assert err.value.status_code == 403
        assert reviewer.feedback(ev["event_id"], "Banana")["outcome"] in {"correct", "incorrect"}
    with Client(server.url) as anon, pytest.raises(ServiceError) as err:
        anon.recognize(path)
    assert err.value.status_code == 401


def test_request_methods_outside_the_standard_set_share_one_label(server):
    with server.client(DEVICE_TOKEN) as c:
        for method in ("FOO", "BAR-1", "PROPFIND"):  # any token is a valid method name in HTTP
            assert c.request(method, "/healthz").status_code == 405
        assert c.request("PATCH", "/v1/catalogue").status_code == 405
        samples = metric_samples(c, "skuscale_request_duration_seconds_count")
    methods = {dict(labels)["method"] for labels in samples}
    assert methods <= {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "other"}
    assert samples[(("method", "other"), ("route", "/healthz"), ("status", "405"))] == 3
    assert samples[(("method", "PATCH"), ("route", "/v1/catalogue"), ("status", "405"))] == 1


def test_reference_image_of_a_sku_with_a_slash(server):
    data = image_bytes("val", "Banana", 1)
    with server.client(REVIEWER_TOKEN) as rev:
        r = rev.post("/v1/catalogue/enrol", data={"sku": "Fruit/Veg Mix"}, files={"files": ("a.jpg", data)})
        assert r.status_code == 200, r.text
        for url in ("/v1/catalogue/Fruit/Veg Mix/image", "/v1/catalogue/Fruit%2FVeg%20Mix/image"):
            r = rev.get(url)
            assert r.status_code == 200 and r.content == data, url
            assert r.headers["content-type"] == "image/jpeg"
        assert rev.get("/v1/catalogue/Fruit/Other/image").status_code == 404
        assert rev.get("/v1/catalogue/Banana/image").status_code == 200
        route = {dict(k)["route"] for k in metric_samples(rev, "skuscale_request_duration_seconds_count")}
        # The label keeps its template from before SKU names could hold "/": dashboards still match.
        assert "/v1/catalogue/{sku}/image" in route and not any(":path" in r for r in route)
