"""Safe image decoding: size limits, full decode, EXIF orientation, RGB output.

Every image that enters skuscale, at build time or at serving time, goes through
:func:`decode_image`, so both paths see identical pixels.
"""

from __future__ import annotations

import hashlib
import io
import re
from os import PathLike
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from skuscale.exceptions import ImageError, ImageTooLargeError

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000

_WHITE = (255, 255, 255, 255)
_MODES_WITH_ALPHA = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MAX = 65535
_HASH_CHUNK_BYTES = 1 << 20


def check_image_file(path: str | PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES) -> int:
    """Check, without reading it, that an image file exists, is regular and is small enough.

    Takes the arguments and raises the errors of :func:`read_image_bytes`; returns the
    file's size in bytes.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError(f"image file not found: {path}") from None
    except OSError as exc:
        raise ImageError(f"cannot read image file {path}: {exc.strerror or exc}") from None
    if not path.is_file():
        raise ImageError(f"not a regular file: {path}")
    if size > max_bytes:
        raise ImageTooLargeError(
            f"image file {path} is {size} bytes, over the limit of {max_bytes} bytes"
        )
    return size


def read_image_bytes(path: str | PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Read an image file's bytes, refusing files over a size limit.

    Parameters
    ----------
    path : str or path-like
        The image file.
    max_bytes : int, default DEFAULT_MAX_BYTES
        Largest accepted file size in bytes.

    Returns
    -------
    bytes
        The file's content.

    Raises
    ------
    ImageError
        If the file is missing, is not a regular file, or cannot be read.
    ImageTooLargeError
        If the file is larger than ``max_bytes``.
    """
    path = Path(path)
    check_image_file(path, max_bytes=max_bytes)
    try:
        with path.open("rb") as handle:
            # Read one byte past the limit so a file that grew after stat() is still caught.
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ImageError(f"cannot read image file {path}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"image file {path} is over the limit of {max_bytes} bytes")
    return data


def hash_image_file(path: str | PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """SHA-256 of an image file's bytes, read in chunks so the file is never held whole.

    Takes the arguments and raises the errors of :func:`read_image_bytes`; returns the
    32-byte digest, equal to ``hashlib.sha256(read_image_bytes(path)).digest()``.
    """
    path = Path(path)
    check_image_file(path, max_bytes=max_bytes)
    digest = hashlib.sha256()
    total = 0
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_HASH_CHUNK_BYTES):
                total += len(chunk)
                # Checked while reading too, so a file that grew after stat() is still caught.
                if total > max_bytes:
                    raise ImageTooLargeError(f"image file {path} is over the limit of {max_bytes} bytes")
                digest.update(chunk)
    except OSError as exc:
        raise ImageError(f"cannot read image file {path}: {exc.strerror or exc}") from None
    return digest.digest()


def decode_image(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode encoded image bytes into a fully loaded, upright RGB image.

    The pixel count is checked from the header before any pixel is decoded.
    The image is then decoded completely, so truncated or corrupt data fails here
    rather than later. EXIF orientation is applied (malformed EXIF is ignored,
    leaving the image as stored), and every colour mode is converted to RGB;
    transparent pixels are composited onto white.

    Parameters
    ----------
    data : bytes
        Encoded image (JPEG, PNG, or any other format Pillow reads).
    max_bytes : int, default DEFAULT_MAX_BYTES
        Largest accepted length of ``data``.
    max_pixels : int, default DEFAULT_MAX_PIXELS
        Largest accepted ``width * height``, checked first: an image over it is refused
        with this limit in the message. Pillow's own decompression-bomb limit
        (``PIL.Image.MAX_IMAGE_PIXELS``) still applies on top of this one.

    Returns
    -------
    PIL.Image.Image
        A loaded image in mode ``"RGB"``.

    Raises
    ------
    ImageError
        If ``data`` is empty, not an image, truncated, corrupt, or in a colour
        mode that cannot be converted to RGB.
    ImageTooLargeError
        If ``data`` or the image's pixel count is over its limit.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    n_bytes = len(data)
    if n_bytes == 0:
        raise ImageError("empty image data")
    if n_bytes > max_bytes:
        raise ImageTooLargeError(
            f"image data is {n_bytes} bytes, over the limit of {max_bytes} bytes"
        )
    try:
        img = _open_and_load(data, max_pixels=max_pixels)
        img = _apply_exif_orientation(img)
        return to_rgb(img)
    except (ImageError, MemoryError):
        raise
    except Exception as exc:
        # Pillow's format plugins raise many exception types on hostile input
        # (struct.error, IndexError, ...); they all mean "this image is unusable",
        # and callers rely on ImageError to skip one bad image and go on.
        raise ImageError(f"image data is corrupt: {exc or type(exc).__name__}") from None


def load_image(
    path: str | PathLike[str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Read and decode an image file; see :func:`decode_image`.

    Parameters
    ----------
    path : str or path-like
        The image file.
    max_bytes : int, default DEFAULT_MAX_BYTES
        Largest accepted file size in bytes.
    max_pixels : int, default DEFAULT_MAX_PIXELS
        Largest accepted ``width * height``.

    Returns
    -------
    PIL.Image.Image
        A loaded, upright image in mode ``"RGB"``.

    Raises
    ------
    ImageError
        If the file is missing or unreadable, or its content cannot be decoded;
        the message names the file.
    ImageTooLargeError
        If the file or its pixel count is over its limit.
    """
    data = read_image_bytes(path, max_bytes=max_bytes)
    try:
        return decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    except ImageError as exc:
        raise type(exc)(f"{path}: {exc}") from exc


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow colour mode to RGB, compositing transparency onto white.

    Parameters
    ----------
    img : PIL.Image.Image
        A loaded image in any mode.

    Returns
    -------
    PIL.Image.Image
        The image in mode ``"RGB"`` (``img`` itself if it already is).

    Raises
    ------
    ImageError
        If Pillow cannot convert the mode to RGB.
    """
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    try:
        if mode == "I" or mode.startswith("I;16") or mode == "F":
            return _high_bit_depth_to_rgb(img)
        # Palette and greyscale/RGB PNGs can carry a transparent colour in info["transparency"].
        if mode in _MODES_WITH_ALPHA or "transparency" in img.info:
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, _WHITE)
            return Image.alpha_composite(background, rgba).convert("RGB")
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageError(f"cannot convert colour mode {mode!r} to RGB: {exc}") from exc


def _open_and_load(data: bytes, *, max_pixels: int) -> Image.Image:
    try:
        # No warnings filter here: filters are process-wide, and the service decodes in
        # threads. Pillow's warning threshold is checked explicitly below, after ``max_pixels``.
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        # Over twice Pillow's limit: Image.open refuses before the size can be read.
        raise _bomb_error(exc, max_pixels) from None
    except UnidentifiedImageError:
        raise ImageError("data is not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"corrupt image header: {exc}") from None

    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels, "
            f"over the limit of {max_pixels} pixels"
        )
    pillow_limit = Image.MAX_IMAGE_PIXELS
    if pillow_limit is not None and width * height > pillow_limit:
        # Only when max_pixels is above Pillow's own limit, which still applies.
        img.close()
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels, over Pillow's "
            f"decompression-bomb limit of {pillow_limit} pixels"
        )
    try:
        img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image is too large to decode safely: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"image data is truncated or corrupt: {exc}") from None
    return img


_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


def _bomb_error(exc: Exception, max_pixels: int) -> ImageTooLargeError:
    """The error for an image that Pillow refused to open as a decompression bomb.

    Pillow raises before the size can be read, when the image has more than twice
    ``PIL.Image.MAX_IMAGE_PIXELS`` pixels; its message holds the pixel count. An image
    over ``max_pixels`` gets the same message as any other image over that limit.
    """
    match = _BOMB_PIXELS.search(str(exc))
    pillow_limit = Image.MAX_IMAGE_PIXELS
    if match:
        pixels = int(match.group(1))
        if pixels > max_pixels:
            return ImageTooLargeError(f"image is {pixels} pixels, over the limit of {max_pixels} pixels")
        limit = f" of {2 * pillow_limit} pixels" if pillow_limit is not None else ""
        return ImageTooLargeError(f"image is {pixels} pixels, over Pillow's decompression-bomb limit{limit}")
    if pillow_limit is not None and max_pixels <= 2 * pillow_limit:
        # More than twice Pillow's limit, so more than max_pixels too.
        return ImageTooLargeError(f"image is over the limit of {max_pixels} pixels")
    return ImageTooLargeError(f"image is too large to decode safely: {exc}")


def _apply_exif_orientation(img: Image.Image) -> Image.Image:
    try:
        upright = ImageOps.exif_transpose(img)
    except MemoryError:
        raise
    except Exception:
        # Malformed EXIF says nothing trustworthy about orientation; the pixels are fine.
        # Pillow's EXIF parser fails in many ways (struct.error, IndexError, ...).
        return img
    return upright if upright is not None else img


def _high_bit_depth_to_rgb(img: Image.Image) -> Image.Image:
    # Pillow's own conversion clips 16-bit values at 255 instead of scaling them.
    values = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16") or (img.mode == "I" and values.max(initial=0) > 255):
        values = np.clip(values, 0, _SIXTEEN_BIT_MAX) / 257.0
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "check_image_file",
    "decode_image",
    "hash_image_file",
    "load_image",
    "read_image_bytes",
    "to_rgb",
]
