"""``skuscale serve``: run the recognition service (uvicorn)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console

console = Console(stderr=True)
#: uvicorn's log levels (``uvicorn.config.LOG_LEVELS``), listed here so that the CLI need not import uvicorn.
LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]


def tcp_listener(host: str, port: int) -> socket.socket:
    """A bound, inheritable TCP listening socket whose accepted connections get ``TCP_NODELAY``.

    uvicorn 0.54 binds the shared socket of ``--workers N`` with ``proto`` 0, and asyncio
    only sets ``TCP_NODELAY`` on accepted sockets that say ``IPPROTO_TCP``; Nagle's
    algorithm then holds each keep-alive response for the client's delayed ACK, about
    40 ms on Linux (uvicorn issue #3149). Binding with ``IPPROTO_TCP`` avoids it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def built_from_embeddings(bundle: Path) -> bool:
    """Whether ``bundle``'s ``bundle.json`` says it has no image backbone (built from an embedding file).

    Read directly, before any worker starts; an unreadable bundle is left for the service to report.
    """
    from skuscale.bundle import MANIFEST

    try:
        doc = json.loads((bundle / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    backbone = doc.get("backbone") if isinstance(doc, dict) else None
    return isinstance(backbone, dict) and not backbone.get("onnx")


def serve(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder (read-only).")],
    db: Annotated[
        str | None, typer.Option(help="Database URL (default: SQLite in --data-dir; postgresql+psycopg://...).")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free port).", min=0, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Image store and default database (default $SKUSCALE_DATA_DIR or ./skuscale-data)."),
    ] = None,
    reference: Annotated[
        Path | None, typer.Option(help="Reference manifest (path,sku) whose pack shots the review page shows.")
    ] = None,
    log_level: Annotated[LogLevel, typer.Option(help="uvicorn log level.", case_sensitive=False)] = "info",
) -> None:
    """Serve BUNDLE over HTTP: /v1 recognition, review queue, enrolment, webhooks, /metrics, /review.

    Other settings (tokens, limits, webhooks) come from SKUSCALE_* environment variables; see docs/service.md.
    """
    import uvicorn
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from skuscale.cli.main import no_backbone_message
    from skuscale.exceptions import SkuscaleError
    from skuscale.serve.app import create_app
    from skuscale.serve.settings import ServeSettings

    # Settings travel through the environment so that every worker process sees the same ones.
    os.environ["SKUSCALE_BUNDLE"] = str(bundle.resolve())
    if db:
        os.environ["SKUSCALE_DB_URL"] = db
    if data_dir:
        os.environ["SKUSCALE_DATA_DIR"] = str(data_dir.resolve())
    if reference:
        os.environ["SKUSCALE_REFERENCE_MANIFEST"] = str(reference.resolve())
    try:
        settings = ServeSettings()
    except (ValidationError, SettingsError) as exc:
        # SettingsError: a SKUSCALE_* variable that cannot even be parsed (an empty list variable, say).
        console.print(f"[bold red]error:[/] invalid settings: {exc}", highlight=False)
        raise typer.Exit(2) from None
    if built_from_embeddings(bundle):
        # Checked here, before the service (or its workers) load the bundle, to give this command's advice.
        console.print(f"[bold red]error:[/] {no_backbone_message('serve images', bundle)}", highlight=False)
        raise typer.Exit(1)
    if not settings.tokens:
        console.print("[yellow]warning:[/] no SKUSCALE_TOKENS configured: every /v1 call will answer 401")
    if workers == 1:
        try:
            app = create_app(settings)
        except (SkuscaleError, OSError) as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(1) from None
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    else:
        from skuscale.monitor.metrics import MULTIPROC_ENV

        # Every worker writes its metrics to files here and /metrics sums them; prometheus_client
        # reads the variable when a worker imports it. A directory the caller set is theirs to wipe.
        own_dir = None if os.environ.get(MULTIPROC_ENV) else tempfile.mkdtemp(prefix="skuscale-metrics-")
        if own_dir:
            os.environ[MULTIPROC_ENV] = own_dir
        try:
            from uvicorn.supervisors import Multiprocess

            config = uvicorn.Config("skuscale.serve.app:app_from_env", factory=True, host=host, port=port,
                                    workers=workers, log_level=log_level)
            try:
                sock = tcp_listener(host, port)
            except OSError as exc:
                console.print(f"[bold red]error:[/] cannot listen on {host}:{port}: {exc}", highlight=False)
                raise typer.Exit(1) from None
            console.print(f"serving on http://{host}:{port} with {workers} workers (Ctrl+C to stop)", highlight=False)
            # What uvicorn.run does for several workers, but on a socket of our own.
            try:
                Multiprocess(config, sockets=[sock]).run()
            except KeyboardInterrupt:
                pass
            finally:
                sock.close()
        finally:
            if own_dir:
                shutil.rmtree(own_dir, ignore_errors=True)
