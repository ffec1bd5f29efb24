"""kill -9 during load, restart: every resolution and enrolment answered 200 is still there."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from skuscale.serve.drill import kill_under_load, wait_until_ready
from tests.serve.conftest import DEVICE_TOKEN, REVIEWER_TOKEN, TOKENS, _free_port, held_out_paths, image_bytes

pytestmark = pytest.mark.slow


def spawn(serve_bundle, data_dir, port, db_config) -> subprocess.Popen:
    env = {**os.environ, "SKUSCALE_TOKENS": json.dumps(TOKENS), "SKUSCALE_WEBHOOK_WORKERS": "false"}
    if db_config.get("db_schema"):
        env["SKUSCALE_DB_SCHEMA"] = db_config["db_schema"]
    cmd = [sys.executable, "-m", "skuscale.cli.main", "serve", str(serve_bundle["bundle"]), "--port", str(port),
           "--data-dir", str(data_dir), "--log-level", "warning"]
    if db_config.get("db_url"):
        cmd += ["--db", db_config["db_url"]]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return wait_until_ready(proc, f"http://127.0.0.1:{port}", timeout=60)


def test_kill_9_loses_no_answered_resolution_or_enrolment(serve_bundle, tmp_path, db_config):
    data_dir, port = tmp_path / "data", _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = spawn(serve_bundle, data_dir, port, db_config)
    auth = {"Authorization": f"Bearer {REVIEWER_TOKEN}"}
    dev_auth = {"Authorization": f"Bearer {DEVICE_TOKEN}"}
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            blobs = [image_bytes("val", s, i) for s in ("Banana", "Red-Beet", "Pink-Lady") for i in range(3)]
            events = []
            for _ in range(3):
                r = c.post("/v1/recognize/batch", headers=dev_auth, files=[("files", ("x.jpg", b)) for b in blobs])
                events += r.json()["events"]
        ref = held_out_paths("reference")[0].read_bytes()
        drill = kill_under_load(
            proc, url, events=events, resolve_sku="Banana", enrol_blobs=[ref], recognize_blob=blobs[0],
            reviewer_headers=auth, device_headers=dev_auth, resolvers=3, recognizers=1, max_enrolments=50,
            enrol_prefix="New-", min_enrolments=1, request_timeout=30, deadline=60, poll=0.01,
        )
        answered_resolutions, answered_enrolments = drill.resolved, drill.enrolled
        assert answered_resolutions and answered_enrolments
        assert len(answered_resolutions) < len(events)  # the kill really happened mid-load
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    proc = spawn(serve_bundle, data_dir, port, db_config)
    try:
        with httpx.Client(base_url=url, timeout=30, headers=auth) as c:
            for eid, sku in answered_resolutions.items():
                ev = c.get(f"/v1/events/{eid}").json()
                assert ev["status"] == "final" and ev["final_sku"] == sku
            catalogue = {s["sku"]: s["enrolled"] for s in c.get("/v1/catalogue").json()["skus"]}
            assert all(catalogue.get(sku) is True for sku in answered_enrolments)
            assert c.get("/readyz").status_code == 200
    finally:
        proc.kill()
        proc.wait()
