"""skuscale: retail SKU recognition that keeps working when the catalogue grows."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("skuscale")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

__all__ = ["__version__"]
