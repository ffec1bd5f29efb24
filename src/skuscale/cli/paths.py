"""Checks of output paths before a command does its work, and messages for OS errors."""

from __future__ import annotations

from pathlib import Path


def _blocked_parent(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` when it is not a folder (``afile/x.json``)."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def output_file_problem(path: Path, flag: str) -> str | None:
    """Why ``path`` cannot be written as a file, or None. Missing parent folders are fine: they are created."""
    if path.is_dir():
        return f"{flag} {path} is a folder; give a file path"
    blocked = _blocked_parent(path)
    if blocked is not None:
        return f"{flag} {path}: {blocked} is a file, not a folder"
    return None


def output_folder_problem(path: Path, flag: str) -> str | None:
    """Why files cannot be written into folder ``path``, or None. A missing folder is fine: it is created."""
    if path.exists() and not path.is_dir():
        return f"{flag} {path} is a file, not a folder; give a folder path"
    blocked = _blocked_parent(path)
    if blocked is not None:
        return f"{flag} {path}: {blocked} is a file, not a folder"
    return None


def os_error_message(exc: OSError) -> str:
    """``Permission denied: out/x.json`` rather than ``[Errno 13] Permission denied: 'out/x.json'``."""
    reason = exc.strerror or str(exc)
    return f"{reason}: {exc.filename}" if exc.filename else reason
