"""Several worker processes: /metrics answers the service's totals from whichever worker it reaches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from skuscale.serve.drill import wait_until_ready
from tests.serve.conftest import (
    BUNDLE_SKUS,
    DEVICE_TOKEN,
    HELD_OUT,
    REVIEWER_TOKEN,
    TOKENS,
    _free_port,
    held_out_paths,
    image_bytes,
)

pytestmark = pytest.mark.slow

DEV = {"Authorization": f"Bearer {DEVICE_TOKEN}"}
REV = {"Authorization": f"Bearer {REVIEWER_TOKEN}"}


def samples(url: str) -> dict[str, dict[tuple, float]]:
    """Every sample of one scrape, on a connection of its own (so any worker may answer it)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def recognize(url: str, sku: str, i: int) -> dict:
    r = httpx.post(f"{url}/v1/recognize", headers=DEV, timeout=30,
                   files={"file": ("x.jpg", image_bytes("val", sku, i), "image/jpeg")})
    assert r.status_code == 200, r.text
    return r.json()


def base_env() -> dict[str, str]:
    env = {**os.environ, "SKUSCALE_TOKENS": json.dumps(TOKENS), "SKUSCALE_WEBHOOK_WORKERS": "false"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


def test_two_processes_on_one_metrics_dir_report_the_same_totals(serve_bundle, tmp_path, db_config):
    """Two uvicorn processes on one database and metrics directory, as ``--workers 2`` runs them."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {**base_env(), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
           "SKUSCALE_BUNDLE": str(serve_bundle["bundle"]), "SKUSCALE_DATA_DIR": str(tmp_path / "data")}
    if db_config:
        env |= {"SKUSCALE_DB_URL": db_config["db_url"], "SKUSCALE_DB_SCHEMA": db_config["db_schema"]}
    procs, urls = [], []
    try:
        for _ in range(2):
            port = _free_port()
            cmd = [sys.executable, "-m", "uvicorn", "--factory", "skuscale.serve.app:app_from_env",
                   "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            procs.append(proc)
            urls.append(f"http://127.0.0.1:{port}")
            wait_until_ready(proc, urls[-1], timeout=90)
        a, b = urls
        on_a = [recognize(a, sku, 0) for sku in BUNDLE_SKUS[:3]]
        for sku in BUNDLE_SKUS[:2]:
            recognize(b, sku, 1)
        # Feedback through the other worker: right for one event of A's, wrong for another.
        first, second = on_a[0], on_a[1]
        assert httpx.post(f"{b}/v1/feedback", headers=REV, json={"event_id": first["event_id"], "sku": first["sku"]},
                          timeout=30).status_code == 200
        wrong = next(s for s in BUNDLE_SKUS if s != second["sku"])
        assert httpx.post(f"{a}/v1/feedback", headers=REV, json={"event_id": second["event_id"], "sku": wrong},
                          timeout=30).status_code == 200
        enrol = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in held_out_paths("reference")]
        r = httpx.post(f"{a}/v1/catalogue/enrol", headers=REV, data={"sku": HELD_OUT}, files=enrol, timeout=60)
        assert r.status_code == 200, r.text

        seen = [samples(a), samples(b)]
        for s in seen:
            assert sum(s["skuscale_recognitions_total"].values()) == 5
            assert sum(s["skuscale_feedback_total"].values()) == 2
            assert s["skuscale_enrolments_total"][()] == 1
            assert s["skuscale_catalogue_skus"][(("source", "enrolled"),)] == 1
            assert s["skuscale_catalogue_skus"][(("source", "bundle"),)] == len(BUNDLE_SKUS)
            assert sum(s["skuscale_ood_score_count"].values()) == 5
            # Local to the answering process, so exactly one series, not one per worker.
            assert len(s["skuscale_bundle_info"]) == 1
            assert s["skuscale_review_queue_depth"] == seen[0]["skuscale_review_queue_depth"]
            accuracy = s["skuscale_sku_accuracy"]
            if first["sku"] == second["sku"]:
                assert accuracy[(("sku", first["sku"]),)] == pytest.approx(0.5)
            else:
                assert accuracy[(("sku", first["sku"]),)] == 1.0
                assert accuracy[(("sku", second["sku"]),)] == 0.0
        assert seen[0]["skuscale_recognitions_total"] == seen[1]["skuscale_recognitions_total"]

        # After a scrape, each process reads only the labels added since, its own included, once.
        third = on_a[2]
        assert httpx.post(f"{a}/v1/feedback", headers=REV, json={"event_id": third["event_id"], "sku": third["sku"]},
                          timeout=30).status_code == 200
        # A later label of an event replaces its earlier one: a correction of `first` (right before),
        # sent twice, through each worker. The counter counts both calls; the accuracy, the event once.
        wrong_first = next(s for s in BUNDLE_SKUS if s != first["sku"])
        for url in (b, a):
            assert httpx.post(f"{url}/v1/feedback", headers=REV, timeout=30,
                              json={"event_id": first["event_id"], "sku": wrong_first}).status_code == 200
        outcomes: dict[str, list[bool]] = {}
        for event, ok in ((first, False), (second, False), (third, True)):
            outcomes.setdefault(event["sku"], []).append(ok)
        for s in (samples(a), samples(b)):
            assert sum(s["skuscale_feedback_total"].values()) == 5
            for sku, oks in outcomes.items():
                assert s["skuscale_sku_accuracy_samples"][(("sku", sku),)] == len(oks)
                assert s["skuscale_sku_accuracy"][(("sku", sku),)] == pytest.approx(sum(oks) / len(oks))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def test_serve_with_workers_sums_over_workers_and_removes_its_metrics_dir(serve_bundle, tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**base_env(), "TMPDIR": str(scratch)}
    cmd = [sys.executable, "-m", "skuscale.cli.main", "serve", str(serve_bundle["bundle"]), "--port", str(port),
           "--data-dir", str(tmp_path / "data"), "--workers", "2", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until_ready(proc, url, timeout=90)
        assert [p.name for p in scratch.iterdir() if p.name.startswith("skuscale-metrics-")]
        # Every request on a connection of its own, so the kernel spreads them over the workers.
        for i in range(8):
            recognize(url, BUNDLE_SKUS[i % len(BUNDLE_SKUS)], 0)
        for _ in range(4):
            assert sum(samples(url)["skuscale_recognitions_total"].values()) == 8
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert not [p.name for p in scratch.iterdir() if p.name.startswith("skuscale-metrics-")]


@pytest.mark.parametrize("ours", [True, False])
def test_listener_gives_accepted_connections_tcp_nodelay(ours):
    """Without TCP_NODELAY each keep-alive response waits ~40 ms for the client's delayed ACK."""
    import asyncio
    import socket

    from skuscale.cli.serve import tcp_listener

    if ours:
        sock = tcp_listener("127.0.0.1", 0)
    else:  # how uvicorn 0.54 binds the socket it shares between workers
        sock = socket.socket(socket.AF_INET)
        sock.bind(("127.0.0.1", 0))
    accepted = []

    class Probe(asyncio.Protocol):
        def connection_made(self, transport):
            s = transport.get_extra_info("socket")
            accepted.append(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def main():
        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        for _ in range(100):
            if accepted:
                break
            await asyncio.sleep(0.01)
        writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    assert accepted and bool(accepted[0]) is ours
