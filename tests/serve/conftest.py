"""Service fixtures: one small real bundle per session, uvicorn on loopback, SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import uvicorn
from prometheus_client import CollectorRegistry

from skuscale.build import build_bundle, default_cache_dir
from skuscale.embed.finetune_config import FinetuneConfig
from skuscale.serve.settings import ServeSettings, hash_token
from skuscale.training import TrainingConfig
from tests.conftest import GROCERY, write_manifest

DEVICE_TOKEN = "device-token-for-tests-0123456789"
REVIEWER_TOKEN = "reviewer-token-for-tests-0123456789"
TOKENS = {hash_token(DEVICE_TOKEN): "device", hash_token(REVIEWER_TOKEN): "reviewer"}
HELD_OUT = "Oatly-Oat-Milk"
BUNDLE_SKUS = ["Arla-Standard-Milk", "Arla-Medium-Fat-Milk", "Granny-Smith", "Pink-Lady", "Banana", "Red-Beet"]
POSTGRES_ENV = "SKUSCALE_TEST_POSTGRES_URL"


def grocery_rows(split: str, sku: str | None = None) -> list[dict]:
    with open(GROCERY / f"{split}.csv", newline="") as fh:
        return [r for r in csv.DictReader(fh) if sku is None or r["sku"] == sku]


def held_out_paths(split: str) -> list[Path]:
    return [GROCERY / r["path"] for r in grocery_rows(split, HELD_OUT)]


@pytest.fixture(scope="session")
def serve_bundle(grocery, tmp_path_factory) -> dict[str, Path]:
    """Six SKUs x 10 train / 3 val / 1 reference, built through the CLI (HELD_OUT is not in it).

    Thresholds use the Clopper-Pearson rule, which certifies nothing on so few held-out
    images ("never accept"), so every recognition goes to the review queue whatever the
    backbone's preprocessing: these tests exercise the queue, not the thresholds.
    """
    root = tmp_path_factory.mktemp("serve_bundle")
    manifests = {}
    for split, n in (("train", 10), ("val", 3), ("reference", 1)):
        rows = [r for sku in BUNDLE_SKUS for r in grocery_rows(split, sku)[:n]]
        manifests[split] = write_manifest(root / f"{split}.csv", rows)
    out = root / "bundle"
    build_bundle(
        manifests["train"], out, val=manifests["val"], reference=manifests["reference"],
        cache_dir=default_cache_dir(), config=TrainingConfig(threshold_method="clopper_pearson"),
        finetune=FinetuneConfig(epochs=0),
    )
    return {"bundle": out, "reference": manifests["reference"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """A uvicorn server in a thread, on a free loopback port."""

    def __init__(self, app):
        self.app = app
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


def _postgres_schema(url: str):
    import sqlalchemy as sa

    schema = "t_" + uuid.uuid4().hex[:12]

    def drop():
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()

    return schema, drop


@pytest.fixture(params=["sqlite", "postgresql"])
def db_config(request, tmp_path):
    """Database settings: SQLite in the test's data dir, or a fresh PostgreSQL schema (dropped afterwards)."""
    if request.param == "sqlite":
        yield {}
        return
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} is not set (CI sets it and runs these against PostgreSQL)")
    schema, drop = _postgres_schema(url)
    try:
        yield {"db_url": url, "db_schema": schema}
    finally:
        drop()


@pytest.fixture
def postgres_url() -> str:
    """The test PostgreSQL server's URL; the test is skipped without one (CI has one)."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} is not set (CI sets it and runs these against PostgreSQL)")
    return url


def make_settings(serve_bundle, data_dir: Path, **overrides) -> ServeSettings:
    values = {
        "bundle": serve_bundle["bundle"],
        "data_dir": data_dir,
        "tokens": TOKENS,
        "reference_manifest": serve_bundle["reference"],
        "webhook_poll_s": 0.1,
        "webhook_backoff_s": 0.2,
        **overrides,
    }
    return ServeSettings(**values)


@pytest.fixture
def make_server(serve_bundle, tmp_path, db_config):
    """Factory: start a live server with settings overrides; every server is stopped at teardown."""
    from skuscale.serve.app import create_app

    servers = []

    def start(data_dir: Path | None = None, **overrides) -> LiveServer:
        settings = make_settings(serve_bundle, data_dir or tmp_path / "data", **{**db_config, **overrides})
        srv = LiveServer(create_app(settings, registry=CollectorRegistry())).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


@pytest.fixture
def server(make_server) -> LiveServer:
    return make_server()


def image_bytes(split: str = "val", sku: str = "Banana", i: int = 0) -> bytes:
    return (GROCERY / grocery_rows(split, sku)[i]["path"]).read_bytes()
