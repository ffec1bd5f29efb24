"""Exceptions raised by skuscale; every one carries a message meant for a person."""


class SkuscaleError(Exception):
    """Base class of all skuscale errors."""


class NotFittedError(SkuscaleError, ValueError):
    """An estimator was used before ``fit``."""


class ManifestError(SkuscaleError):
    """A manifest or image folder has problems; ``problems`` lists every one of them."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        shown = "\n".join(f"  - {p}" for p in self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(f"{len(self.problems)} problem(s) in {source}:\n{shown}{more}")


class ImageError(SkuscaleError):
    """An image could not be decoded, or breaks a size limit."""


class ImageTooLargeError(ImageError):
    """An image's byte size or pixel count is over the configured limit."""


class BundleError(SkuscaleError):
    """A bundle is missing, tampered with, or of an incompatible format."""
