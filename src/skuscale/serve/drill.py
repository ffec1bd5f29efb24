"""Kill-under-load drill: write traffic against a running service, then SIGKILL it mid-load.

Used by the durability test and ``benchmarks/service_load.py``: every resolution and
enrolment the service answered with 200 before the kill must survive a restart.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass
class DrillResult:
    """What the service answered with 200 before it was killed."""

    resolved: dict[str, str] = field(default_factory=dict)
    enrolled: list[str] = field(default_factory=list)


def wait_until_ready(proc: subprocess.Popen, url: str, *, timeout: float = 60.0) -> subprocess.Popen:
    """Poll ``url/readyz`` until the server started as ``proc`` answers 200.

    Raises ``RuntimeError`` with the end of its stderr if it exits first, and kills it
    if it is not ready within ``timeout`` seconds.
    """
    import httpx

    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if proc.poll() is not None:
            stderr = proc.stderr.read().decode()[-3000:] if proc.stderr else ""
            raise RuntimeError(f"server exited: {stderr}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server did not become ready in {timeout:g} s")


def kill_under_load(
    proc: subprocess.Popen,
    url: str,
    *,
    events: Sequence[Mapping],
    resolve_sku: str,
    enrol_blobs: Sequence[bytes],
    recognize_blob: bytes,
    reviewer_headers: Mapping[str, str],
    device_headers: Mapping[str, str],
    resolvers: int = 4,
    recognizers: int = 2,
    max_enrolments: int = 1000,
    enrol_prefix: str = "New-",
    min_enrolments: int = 1,
    request_timeout: float = 60.0,
    deadline: float = 120.0,
    poll: float = 0.005,
) -> DrillResult:
    """Resolve ``events``, enrol new SKUs and recognise concurrently; kill ``proc`` half-way.

    The kill comes once half of the events are resolved and ``min_enrolments`` SKUs are
    enrolled (or after ``deadline`` seconds); the worker threads stop at their first
    failed request.
    """
    import httpx

    result = DrillResult()
    lock = threading.Lock()
    stop = threading.Event()

    def resolver(chunk):
        with httpx.Client(base_url=url, timeout=request_timeout, headers=dict(reviewer_headers)) as c:
            for ev in chunk:
                try:
                    r = c.post(f"/v1/review/{ev['event_id']}/resolve", json={"decision": "sku", "sku": resolve_sku})
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    with lock:
                        result.resolved[ev["event_id"]] = resolve_sku

    def enroller():
        with httpx.Client(base_url=url, timeout=request_timeout, headers=dict(reviewer_headers)) as c:
            for k in range(max_enrolments):
                sku = f"{enrol_prefix}{k}"
                try:
                    r = c.post("/v1/catalogue/enrol", data={"sku": sku},
                               files={"files": ("a.jpg", enrol_blobs[k % len(enrol_blobs)])})
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    with lock:
                        result.enrolled.append(sku)

    def recognizer():
        with httpx.Client(base_url=url, timeout=request_timeout, headers=dict(device_headers)) as c:
            while not stop.is_set():
                try:
                    c.post("/v1/recognize", files={"file": ("x.jpg", recognize_blob)})
                except httpx.HTTPError:
                    return

    threads = [threading.Thread(target=resolver, args=(events[i::resolvers],)) for i in range(resolvers)]
    threads += [threading.Thread(target=enroller)] + [threading.Thread(target=recognizer) for _ in range(recognizers)]
    for t in threads:
        t.start()
    until = time.monotonic() + deadline
    while time.monotonic() < until:
        with lock:
            if len(result.resolved) >= len(events) // 2 and len(result.enrolled) >= min_enrolments:
                break
        time.sleep(poll)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stop.set()
    for t in threads:
        t.join(request_timeout)
    with lock:
        return DrillResult(resolved=dict(result.resolved), enrolled=list(result.enrolled))
