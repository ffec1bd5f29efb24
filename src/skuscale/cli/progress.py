"""Rich-backed progress output for long commands (stderr, so --json stdout stays clean)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from skuscale.build import BuildProgress

err_console = Console(stderr=True)


def image_progress(unit: str = "images") -> Progress:
    """A bar with done/total, ``unit`` (a rich text template), elapsed and remaining time."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )


class RichBuildProgress(BuildProgress):
    """Stage messages and an image progress bar per embedding pass."""

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._task = None

    def step(self, message: str) -> None:
        err_console.log(message)

    def embed_start(self, total: int, label: str) -> None:
        self._progress = image_progress()
        self._progress.start()
        self._task = self._progress.add_task(f"embedding {label}", total=total)

    def embed_advance(self, n: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def embed_end(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def train_start(self, total_steps: int, label: str) -> None:
        self._progress = image_progress("steps  loss {task.fields[loss]}")
        self._progress.start()
        self._task = self._progress.add_task(label, total=total_steps, loss="-")

    def train_advance(self, step: int, loss: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step, loss=f"{loss:.3f}")

    def train_end(self) -> None:
        self.embed_end()
