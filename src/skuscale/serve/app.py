"""The recognition service: ``create_app(settings)`` builds the FastAPI application.

Bands over HTTP, a review queue with a server-rendered review page, feedback,
enrolment of new SKUs without retraining, Prometheus metrics, bearer-token roles and
signed webhooks from a database outbox. See ``docs/service.md``.
"""

from __future__ import annotations

import csv
import fcntl
import json
import logging
import re
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from pydantic import BaseModel, Field, HttpUrl, field_validator, model_validator
from sqlalchemy import text
from sqlalchemy.exc import DataError

from skuscale import __version__
from skuscale.exceptions import ImageError, ImageTooLargeError
from skuscale.monitor.accuracy import RollingAccuracy
from skuscale.monitor.metrics import ServiceMetrics
from skuscale.serve import repository as repo
from skuscale.serve.auth import COOKIE, ROLE_RANK, bearer_token, identify, require
from skuscale.serve.db import WEBHOOK_URL_LENGTH, make_engine, make_sessionmaker, migrate
from skuscale.serve.guard import RequestGuard
from skuscale.serve.images import ImageStore
from skuscale.serve.recognizer import Recognizer
from skuscale.serve.settings import ServeSettings
from skuscale.serve.webhooks import OutboxWorker

log = logging.getLogger("skuscale.serve")

SKU_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.,'&()+/-]{0,126}$")
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
MULTIPART_SLACK = 64 * 1024
#: Largest body of every route that takes no images (JSON bodies, the login form).
JSON_BODY_LIMIT = 1024 * 1024
#: Largest ``offset`` of the review queue (keeps it within every database's integer range).
MAX_OFFSET = 2**31 - 1

device = require("device")
reviewer = require("reviewer")


# ------------------------------------------------------------------------- request bodies
def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text (a NUL, an unpaired surrogate), or None."""
    if "\x00" in value:
        return "NUL characters are not allowed"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "unpaired surrogates are not allowed"
    return None


class Body(BaseModel):
    """A JSON request body: no string field may hold text that a database cannot store."""

    @field_validator("*", mode="after")
    @classmethod
    def _storable_text(cls, value):
        if isinstance(value, str) and (problem := text_problem(value)):
            raise ValueError(problem)
        return value


class ResolveBody(Body):
    decision: Literal["sku", "new_product", "not_a_product"]
    sku: str | None = Field(default=None, max_length=128, description="Catalogue SKU (decision 'sku').")
    proposed_sku: str | None = Field(default=None, max_length=128, description="New SKU name ('new_product').")

    @model_validator(mode="after")
    def _fields_match_decision(self):
        if self.decision == "sku" and not self.sku:
            raise ValueError("decision 'sku' needs 'sku'")
        if self.decision == "new_product" and not self.proposed_sku:
            raise ValueError("decision 'new_product' needs 'proposed_sku'")
        return self


class FeedbackBody(Body):
    event_id: str = Field(max_length=32)
    sku: str | None = Field(default=None, max_length=200, description="The true SKU.")
    not_a_product: bool = False
    source: str | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _one_truth(self):
        if (self.sku is None) == (not self.not_a_product):
            raise ValueError("give exactly one of 'sku' or 'not_a_product': true")
        return self


class WebhookBody(Body):
    url: HttpUrl = Field(description=f"Receiver URL, at most {WEBHOOK_URL_LENGTH} characters.")
    secret: str | None = Field(default=None, min_length=16, max_length=128)

    @field_validator("url", mode="after")
    @classmethod
    def _url_fits(cls, value: HttpUrl) -> HttpUrl:
        # Checked on the normalised form: that is what is stored.
        if len(str(value)) > WEBHOOK_URL_LENGTH:
            raise ValueError(f"URL longer than {WEBHOOK_URL_LENGTH} characters")
        return value


# ------------------------------------------------------------------------- helpers
#: Longest multipart filename quoted in an error message (the rest is cut).
SHOWN_FILENAME = 100


def image_label(index: int, total: int, filename: str | None = None, *, event_id: str | None = None) -> str:
    """How an error names one of several images, counted from 1: ``image 2 of 3 ('shelf.jpg')``,
    or ``image 3 of 3 (event <id>)`` for an enrolment image taken from a review item.

    The multipart filename, when there is one, is quoted with ``repr``, which escapes control
    characters and unpaired surrogates, so the message can always be sent as JSON.
    """
    where = f"image {index + 1} of {total}"
    if filename:
        shown = filename if len(filename) <= SHOWN_FILENAME else filename[:SHOWN_FILENAME] + "..."
        where += f" ({shown!r})"
    elif event_id:
        where += f" (event {event_id})"
    return where


def _read_upload(upload: UploadFile, max_bytes: int, where: str | None = None) -> bytes:
    data = upload.file.read(max_bytes + 1)
    if len(data) > max_bytes:
        where = where or (f"image ({upload.filename!r})" if upload.filename else "image")
        raise HTTPException(413, f"{where} is over the limit of {max_bytes} bytes")
    return data


def _require_multipart(request: Request) -> None:
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise HTTPException(415, f"send the image(s) as multipart/form-data, not {ctype or 'no content type'!r}")


def _image_media_type(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(12)
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def _reference_images(manifest: Path | None) -> dict[str, Path]:
    if manifest is None:
        return {}
    out: dict[str, Path] = {}
    with open(manifest, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            path = Path(row["path"])
            if not path.is_absolute():
                path = manifest.parent / path
            out.setdefault(row["sku"], path)
    return out


def create_app(settings: ServeSettings, registry: CollectorRegistry | None = None) -> FastAPI:
    """Build the service.

    Parameters
    ----------
    settings : ServeSettings
    registry : CollectorRegistry, optional
        Prometheus registry for the app's metrics (a new one by default, so several
        apps can live in one process, e.g. in tests).

    Returns
    -------
    FastAPI
        The bundle is loaded, the database migrated and earlier enrolments re-applied
        before this returns; the webhook worker starts with the app's lifespan.
    """
    registry = registry if registry is not None else CollectorRegistry()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    recognizer = Recognizer(settings.bundle, threads=settings.onnx_threads, enrol_threshold=settings.enrol_threshold)
    engine = make_engine(settings.database_url, schema=settings.db_schema)
    with open(settings.data_dir / "migrate.lock", "w") as lock_file:
        # Worker processes start together; only one may migrate a SQLite file at a time.
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        migrate(engine, schema=settings.db_schema)
    Session = make_sessionmaker(engine)
    store = ImageStore(settings.data_dir / "images")
    references = _reference_images(settings.reference_manifest)
    enrol_lock = threading.Lock()

    def sync_enrolments() -> None:
        """Apply enrolments committed by this or another worker process since the last look."""
        with Session() as session:
            if repo.latest_enrolment_id(session) <= recognizer.applied_enrolment_id:
                return
            with enrol_lock:
                for eid, sku, category, X in repo.enrolments_after(session, recognizer.applied_enrolment_id):
                    skipped = recognizer.apply_enrolment(eid, sku, X, category)
                    if skipped:
                        log.warning("enrolment %d of %r not applied: %s", eid, sku, skipped)

    sync_enrolments()

    def queue_depth() -> dict[str, int]:
        with Session() as session:
            return repo.queue_depth(session)

    accuracy = RollingAccuracy(settings.accuracy_window)
    label_feed = repo.LabelFeed()
    accuracy_lock = threading.Lock()

    def refresh_accuracy() -> None:
        """Add the resolutions and feedback committed (by any process) since the last look to the rolling accuracy."""
        with accuracy_lock, Session() as session:
            catalogue = set(recognizer.skus)
            accuracy.extend(label for label in label_feed.read(session) if label.sku in catalogue)

    refresh_accuracy()
    metrics = ServiceMetrics(
        registry,
        ood_threshold=recognizer.model.router.ood_threshold,
        bundle_info=recognizer.info(),
        queue_depth=queue_depth,
        accuracy=accuracy,
    )

    def update_catalogue_gauge() -> None:
        metrics.catalogue_size.labels(source="bundle").set(len(recognizer.bundle_skus))
        metrics.catalogue_size.labels(source="enrolled").set(len(recognizer.enrolled))

    update_catalogue_gauge()
    worker = OutboxWorker(Session, settings, on_result=lambda r: metrics.webhook_deliveries.labels(result=r).inc())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.webhook_workers:
            worker.start()
        try:
            yield
        finally:
            worker.stop()
            engine.dispose()

    app = FastAPI(
        title="skuscale recognition service",
        version=__version__,
        description="SKU recognition with confidence bands, a review queue and enrolment without retraining.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.recognizer = recognizer
    app.state.sessionmaker = Session
    app.state.engine = engine
    app.state.metrics = metrics
    app.state.registry = registry
    app.state.store = store
    app.state.worker = worker

    image_body_limits = {
        "/v1/recognize": settings.max_image_bytes + MULTIPART_SLACK,
        "/v1/recognize/batch": settings.max_image_bytes * settings.max_batch + MULTIPART_SLACK,
        "/v1/catalogue/enrol": settings.max_image_bytes * settings.max_enrol_images + MULTIPART_SLACK,
    }

    def body_limit(method: str, path: str) -> int:
        return (image_body_limits.get(path) if method == "POST" else None) or JSON_BODY_LIMIT

    def role_of(request: Request) -> str | None:
        who = identify(bearer_token(request), settings.tokens)
        return None if who is None else who[0]

    def observe(method: str, route: str, status: int, seconds: float) -> None:
        metrics.latency.labels(method=method, route=route, status=str(status)).observe(seconds)

    # Every /v1 route needs a token: unauthenticated requests are answered before their body is read.
    app.add_middleware(
        RequestGuard, routes=app.router.routes, body_limit=body_limit,
        protected=lambda path: path.startswith("/v1/"), role_of=role_of, role_rank=ROLE_RANK, observe=observe,
    )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        # FastAPI's own handler echoes the input as UTF-8 and fails (500) on an unpaired surrogate,
        # which a JSON body may carry ("\ud800"): this one escapes non-ASCII instead.
        content = json.dumps({"detail": jsonable_encoder(exc.errors())})
        return Response(content, 422, media_type="application/json")

    @app.exception_handler(DataError)
    async def database_rejected_value(request: Request, exc: DataError):
        # A value the database cannot store or compare (validation should have caught it first).
        reason = (str(exc.orig).splitlines() or [""])[0]
        log.warning("database rejected a request value on %s: %s", request.scope.get("path"), reason)
        return JSONResponse({"detail": "a value in the request is not acceptable to the database"}, 422)

    # --------------------------------------------------------------------- recognition
    def _decode_all(blobs: list[bytes], labels: list[str] | None) -> list:
        """Decode every image, or answer 413/422 for the first bad one, named by its label
        (``image 2 of 3 ('b.jpg'): ...``; no label for the lone image of ``/v1/recognize``)."""
        images = []
        for i, data in enumerate(blobs):
            where = f"{labels[i]}: " if labels else ""
            if len(data) > settings.max_image_bytes:
                raise HTTPException(413, f"{where}over the limit of {settings.max_image_bytes} bytes")
            try:
                images.append(
                    recognizer.decode(data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
                )
            except ImageTooLargeError as exc:
                raise HTTPException(422, f"{where}{exc}") from None
            except ImageError as exc:
                raise HTTPException(422, f"{where}not a usable image: {exc}") from None
        return images

    def _recognize(blobs: list[bytes], labels: list[str] | None = None) -> list[dict]:
        images = _decode_all(blobs, labels)
        sync_enrolments()
        recs = recognizer.recognize(recognizer.embed(images))
        shas = [store.put(data) if rec.band != "accept" else None for rec, data in zip(recs, blobs, strict=True)]
        with Session() as session:
            repo.ensure_images(session, ((sha, store.relative_path(sha), len(data))
                                         for sha, data in zip(shas, blobs, strict=True) if sha is not None))
            events = [repo.add_event(session, rec, sha) for rec, sha in zip(recs, shas, strict=True)]
            session.commit()
            out = [repo.event_dict(ev) for ev in events]
        for rec in recs:
            metrics.record_recognition(rec.sku, rec.band, rec.ood_score)
        if any(rec.band == "accept" for rec in recs):
            worker.wake()
        return out

    @app.post("/v1/recognize", tags=["recognition"], dependencies=[Depends(device), Depends(_require_multipart)])
    def recognize(file: Annotated[UploadFile, File(description="One image.")]) -> dict:
        """Recognise one image: event id, band, SKU, confidence, OOD score and the top-5 candidates."""
        return _recognize([_read_upload(file, settings.max_image_bytes)])[0]

    @app.post(
        "/v1/recognize/batch", tags=["recognition"], dependencies=[Depends(device), Depends(_require_multipart)]
    )
    def recognize_batch(files: Annotated[list[UploadFile], File(description="Images.")]) -> dict:
        """Recognise several images at once (all or nothing: one bad image rejects the batch)."""
        if len(files) > settings.max_batch:
            raise HTTPException(413, f"at most {settings.max_batch} images per batch, got {len(files)}")
        labels = [image_label(i, len(files), f.filename) for i, f in enumerate(files)]
        blobs = [_read_upload(f, settings.max_image_bytes, where) for f, where in zip(files, labels, strict=True)]
        return {"events": _recognize(blobs, labels)}

    @app.get("/v1/events/{event_id}", tags=["recognition"], dependencies=[Depends(device)])
    def get_event(event_id: str) -> dict:
        """One event; ``status`` is ``final`` or ``pending``. Act only on final events."""
        with Session() as session:
            try:
                return repo.event_dict(repo.get_event(session, event_id))
            except repo.NotFoundError as exc:
                raise HTTPException(404, str(exc)) from None

    @app.get("/v1/events/{event_id}/image", tags=["review"], dependencies=[Depends(reviewer)])
    def event_image(event_id: str):
        with Session() as session:
            ev = session.get(repo.Event, event_id)
            if ev is None or ev.image_sha256 is None:
                raise HTTPException(404, "no stored image for this event")
            path = store.path(ev.image_sha256)
        return FileResponse(path, media_type=_image_media_type(path), headers={"X-Content-Type-Options": "nosniff"})

    # --------------------------------------------------------------------- review
    @app.get("/v1/review", tags=["review"], dependencies=[Depends(reviewer)])
    def review_queue(
        band: Literal["verify", "unknown"] | None = None,
        sku: str | None = None,
        category: str | None = None,
        status: Literal["pending", "final", "all"] = "pending",
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    ) -> dict:
        """Review items (``verify`` and ``unknown`` events), oldest first."""
        with Session() as session:
            items, total = repo.list_review(
                session, band=band, sku=sku, category=category, status=status, limit=limit, offset=offset
            )
            return {"total": total, "limit": limit, "offset": offset, "items": [repo.event_dict(e) for e in items]}

    @app.post("/v1/review/{event_id}/resolve", tags=["review"])
    def resolve(event_id: str, body: ResolveBody, who: Annotated[str, Depends(reviewer)]) -> dict:
        """Record a reviewer's answer. 422: SKU not in the catalogue; 409: already final."""
        sync_enrolments()  # a SKU enrolled through another worker process is in the catalogue too
        catalogue = set(recognizer.skus)
        final_sku, proposed = None, None
        if body.decision == "sku":
            if body.sku not in catalogue:
                raise HTTPException(422, f"{body.sku!r} is not in the catalogue")
            final_sku = body.sku
        elif body.decision == "new_product":
            name = body.proposed_sku.strip()
            if not SKU_NAME.match(name):
                raise HTTPException(422, "proposed_sku: letters, digits and ' _.,&()+/-' only, up to 127 characters")
            if name in catalogue:
                raise HTTPException(422, f"{name!r} is in the catalogue already: resolve with decision 'sku'")
            proposed = name
        with Session() as session:
            try:
                ev = repo.resolve(
                    session, event_id, resolution=body.decision, final_sku=final_sku, proposed_sku=proposed, by=who
                )
            except repo.NotFoundError as exc:
                raise HTTPException(404, str(exc)) from None
            except repo.ConflictError as exc:
                raise HTTPException(409, str(exc)) from None
            session.commit()
            out = repo.event_dict(ev)
        metrics.resolutions.labels(decision=body.decision).inc()
        metrics.record_outcome(out["sku"], final_sku == out["sku"], event_id=event_id, at=ev.resolved_at)
        worker.wake()
        return out

    @app.post("/v1/feedback", tags=["review"])
    def feedback(body: FeedbackBody, who: Annotated[str, Depends(reviewer)]) -> dict:
        """Ground truth from downstream for any event (e.g. a cashier's correction)."""
        with Session() as session:
            try:
                ev = repo.get_event(session, body.event_id)
            except repo.NotFoundError as exc:
                raise HTTPException(404, str(exc)) from None
            fb, correct = repo.add_feedback(
                session, ev, truth_sku=body.sku, not_a_product=body.not_a_product, source=body.source or who
            )
            session.commit()
            sku, at = ev.sku, fb.created_at
        metrics.record_outcome(sku, correct, event_id=ev.id, at=at)
        return {"event_id": body.event_id, "feedback_id": fb.id, "outcome": "correct" if correct else "incorrect"}

    # --------------------------------------------------------------------- catalogue
    @app.get("/v1/catalogue", tags=["catalogue"], dependencies=[Depends(device)])
    def catalogue() -> dict:
        """Every SKU, with its category and whether it was enrolled through the service."""
        sync_enrolments()
        skus = recognizer.skus
        return {
            "n_skus": len(skus),
            "skus": [
                {"sku": s, "category": recognizer.category_of(s), "enrolled": s in recognizer.enrolled} for s in skus
            ],
        }

    # ``:path``: a SKU name may contain "/" (SKU_NAME allows it).
    @app.get("/v1/catalogue/{sku:path}/image", tags=["catalogue"], dependencies=[Depends(reviewer)])
    def reference_image(sku: str):
        """A reference image of a SKU: its pack shot, or the first image it was enrolled from."""
        if sku in references and references[sku].is_file():
            return FileResponse(references[sku])
        with Session() as session:
            sha = repo.enrolment_image(session, sku)
        if sha is None:
            raise HTTPException(404, f"no reference image for {sku!r}")
        path = store.path(sha)
        return FileResponse(path, media_type=_image_media_type(path), headers={"X-Content-Type-Options": "nosniff"})

    @app.post("/v1/catalogue/enrol", tags=["catalogue"], dependencies=[Depends(reviewer), Depends(_require_multipart)])
    def enrol(
        sku: Annotated[str, Form(max_length=128)],
        category: Annotated[str | None, Form(max_length=128)] = None,
        files: Annotated[list[UploadFile] | None, File(description="Reference pack shots.")] = None,
        event_ids: Annotated[list[str] | None, Form(description="Resolved new_product review items.")] = None,
    ) -> dict:
        """Add a SKU from one or more images, without retraining; the next request can return it."""
        sku = sku.strip()
        if not SKU_NAME.match(sku):
            raise HTTPException(422, "sku: letters, digits and ' _.,&()+/-' only, up to 127 characters")
        if category is not None and category.strip() and not SKU_NAME.match(category.strip()):
            raise HTTPException(422, "category: letters, digits and ' _.,&()+/-' only")
        category = category.strip() if category and category.strip() else None
        if sku in recognizer.bundle_skus:
            raise HTTPException(409, f"{sku!r} is in the bundle's catalogue already")
        files = files or []
        event_ids = event_ids or []
        for eid in event_ids:
            if problem := text_problem(eid):
                raise HTTPException(422, f"event_ids: {problem}")
        if len(files) + len(event_ids) > settings.max_enrol_images:
            raise HTTPException(413, f"at most {settings.max_enrol_images} images per enrolment")
        total = len(files) + len(event_ids)
        labels = [image_label(i, total, f.filename) for i, f in enumerate(files)]
        blobs = [_read_upload(f, settings.max_image_bytes, where) for f, where in zip(files, labels, strict=True)]
        with Session() as session:
            for eid in event_ids:
                ev = session.get(repo.Event, eid)
                if ev is None:
                    raise HTTPException(422, f"no event {eid!r}")
                if ev.resolution != "new_product" or ev.proposed_sku != sku:
                    raise HTTPException(422, f"event {eid} is not a resolved new_product item proposed as {sku!r}")
                if ev.image_sha256 is None:
                    raise HTTPException(422, f"event {eid} has no stored image")
                try:
                    blobs.append(store.get(ev.image_sha256))
                except OSError:
                    raise HTTPException(422, f"event {eid}: its stored image is missing from the image store") from None
                labels.append(image_label(len(blobs) - 1, total, event_id=eid))
        if not blobs:
            raise HTTPException(422, "enrolment needs at least one image (files or event_ids)")
        X = recognizer.embed(_decode_all(blobs, labels))
        shas = [store.put(data) for data in blobs]
        with enrol_lock, Session() as session:
            repo.lock_enrolments(session)  # first: the whole transaction is serialised with other enrolments
            repo.ensure_images(session, ((sha, store.relative_path(sha), len(data))
                                         for sha, data in zip(shas, blobs, strict=True)))
            row = repo.add_enrolment(session, sku, category, X, shas)
            session.commit()
            enrolment_id = row.id
        sync_enrolments()
        metrics.enrolments.inc()
        update_catalogue_gauge()
        return {
            "sku": sku,
            "category": recognizer.category_of(sku),
            "enrolment_id": enrolment_id,
            "n_images": len(blobs),
            "threshold": float(recognizer.model.router.sku_thresholds.threshold_for(sku)),
            "n_skus": len(recognizer.skus),
        }

    # --------------------------------------------------------------------- webhooks
    @app.post("/v1/webhooks", tags=["webhooks"], dependencies=[Depends(reviewer)], status_code=201)
    def add_webhook(body: WebhookBody) -> dict:
        """Register a receiver of ``event.finalized`` messages; the answer holds its signing secret."""
        with Session() as session:
            hook = repo.add_webhook(session, str(body.url), body.secret)
            session.commit()
            return {"id": hook.id, "url": hook.url, "secret": hook.secret}

    @app.get("/v1/webhooks", tags=["webhooks"], dependencies=[Depends(reviewer)])
    def list_webhooks() -> dict:
        with Session() as session:
            hooks = session.query(repo.Webhook).order_by(repo.Webhook.created_at).all()
            return {"webhooks": [{"id": h.id, "url": h.url, "active": h.active} for h in hooks]}

    @app.delete("/v1/webhooks/{hook_id}", tags=["webhooks"], dependencies=[Depends(reviewer)])
    def delete_webhook(hook_id: str) -> dict:
        with Session() as session:
            hook = session.get(repo.Webhook, hook_id)
            if hook is None:
                raise HTTPException(404, f"no webhook {hook_id!r}")
            hook.active = False
            cancelled = repo.cancel_deliveries(session, hook_id)
            session.commit()
        if cancelled:
            log.info("webhook %s deleted: %d pending deliveries cancelled", hook_id, cancelled)
        return {"id": hook_id, "active": False}

    # --------------------------------------------------------------------- operations
    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    def readyz():
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # any database failure means not ready
            return JSONResponse({"status": "unavailable", "reason": f"database: {type(exc).__name__}"}, 503)
        return {"status": "ready", "skus": len(recognizer.skus), "bundle": recognizer.info()["version"]}

    @app.get("/metrics", tags=["operations"])
    def prometheus_metrics() -> Response:
        if metrics.multiprocess_dir:
            # Other workers' feedback and enrolments reach this process only through the database.
            try:
                sync_enrolments()
                refresh_accuracy()
            except Exception as exc:  # a scrape must not fail because the database is briefly away
                log.warning("metrics: per-SKU accuracy not refreshed (%s: %s)", type(exc).__name__, exc)
        return PlainTextResponse(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    # --------------------------------------------------------------------- review page
    @app.get("/review", response_class=HTMLResponse, include_in_schema=False)
    def review_page(
        request: Request,
        band: Literal["verify", "unknown"] | None = None,
        sku: str | None = None,
        category: str | None = None,
    ):
        who = identify(request.cookies.get(COOKIE), settings.tokens)
        if who is None or who[0] != "reviewer":
            return TEMPLATES.TemplateResponse(request, "login.html", {"error": None})
        with Session() as session:
            items, total = repo.list_review(session, band=band, sku=sku, category=category, limit=25)
            rows = [repo.event_dict(e) for e in items]
        return TEMPLATES.TemplateResponse(
            request,
            "review.html",
            {"items": rows, "total": total, "skus": recognizer.skus, "band": band, "sku": sku, "category": category},
        )

    @app.post("/review/login", include_in_schema=False)
    def review_login(request: Request, token: Annotated[str, Form()]):
        who = identify(token, settings.tokens)
        if who is None or who[0] != "reviewer":
            return TEMPLATES.TemplateResponse(
                request, "login.html", {"error": "That is not a reviewer token."}, status_code=401
            )
        response = RedirectResponse("/review", status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", max_age=12 * 3600,
                            secure=request.url.scheme == "https")
        return response

    return app


def app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory`` (several workers): settings from ``SKUSCALE_*``."""
    return create_app(ServeSettings())


__all__ = ["ServeSettings", "app_from_env", "create_app"]
