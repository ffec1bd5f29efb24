"""Image preprocessing shared by bundle building and serving (numpy and Pillow only).

Resize so the shorter side is ``resize_shorter`` (bilinear), centre-crop a square of
``image_size``, scale to ``(pixel - mean) / std`` and lay out channels first. The
same function runs at build and at serving time, so embeddings match exactly.
Images more than 64 times longer than wide (or wider than long) are resampled only
in the crop's region, so their memory use stays bounded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from numbers import Integral, Real
from typing import Any

import numpy as np
from PIL import Image

from skuscale.data.images import to_rgb

_FINGERPRINT_VERSION = "v1"
# Images whose resized longer side is at most this many times the shorter side are
# resized whole, exactly as before; longer, thinner ones only in the crop's region.
_MAX_WHOLE_RESIZE_ASPECT = 64


@dataclass(frozen=True)
class Preprocessing:
    """Settings of the resize, centre-crop and normalisation step.

    The defaults match EfficientNet-Lite's TensorFlow normalisation,
    ``(pixel - 127) / 128``.

    Parameters
    ----------
    image_size : int, default 224
        Side of the square crop fed to the network.
    resize_shorter : int, default 256
        The image is first resized (bilinear) so its shorter side has this
        length; must be at least ``image_size``.
    mean : float, default 127.0
        Value subtracted from every 0-255 pixel value.
    std : float, default 128.0
        Divisor applied after subtracting ``mean``; must be positive.

    Raises
    ------
    ValueError
        If a size is not a positive integer, ``resize_shorter < image_size``,
        or ``mean``/``std`` are not finite numbers with ``std > 0``.
    """

    image_size: int = 224
    resize_shorter: int = 256
    mean: float = 127.0
    std: float = 128.0

    def __post_init__(self) -> None:
        for name in ("image_size", "resize_shorter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.resize_shorter < self.image_size:
            raise ValueError(
                f"resize_shorter ({self.resize_shorter}) must be at least "
                f"image_size ({self.image_size})"
            )
        for name in ("mean", "std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.std <= 0:
            raise ValueError(f"std must be positive, got {self.std!r}")

    def fingerprint(self) -> str:
        """A short, stable string identifying these settings, for cache keys.

        Returns
        -------
        str
            For example ``"lite-224-256-127-128-v1"`` for the defaults.
        """
        parts = [
            str(self.image_size),
            str(self.resize_shorter),
            _format_number(self.mean),
            _format_number(self.std),
        ]
        return "-".join(["lite", *parts, _FINGERPRINT_VERSION])

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-able dict; inverse of :meth:`from_dict`."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        """Rebuild settings written by :meth:`to_dict`.

        Parameters
        ----------
        d : mapping
            Must hold exactly the keys ``image_size``, ``resize_shorter``,
            ``mean`` and ``std``.

        Returns
        -------
        Preprocessing

        Raises
        ------
        ValueError
            If keys are missing or unknown (an unknown key may mean settings
            from a newer version that this one would silently ignore), or a
            value is invalid.
        """
        expected = {f.name for f in fields(cls)}
        missing = sorted(expected - set(d))
        unknown = sorted(set(d) - expected)
        if missing or unknown:
            raise ValueError(
                f"preprocessing settings must have keys {sorted(expected)}; "
                f"missing {missing}, unknown {unknown}"
            )
        return cls(**{name: d[name] for name in expected})


def preprocess_image(img: Image.Image, prep: Preprocessing, *, flip: bool = False) -> np.ndarray:
    """Turn one image into the network's input array.

    Parameters
    ----------
    img : PIL.Image.Image
        The image; non-RGB modes are converted as :func:`decode_image` does.
    prep : Preprocessing
        Resize, crop and normalisation settings.
    flip : bool, default False
        Mirror the result left-right (test-time augmentation).

    Returns
    -------
    numpy.ndarray
        C-contiguous float32 array of shape ``(3, image_size, image_size)``.
    """
    if not isinstance(img, Image.Image):
        raise TypeError(f"img must be a PIL.Image.Image, got {type(img).__name__}")
    rgb = to_rgb(img)
    width, height = rgb.size
    if width == 0 or height == 0:
        raise ValueError(f"image has no pixels (size {width}x{height})")
    new_size = _resized_size(width, height, prep.resize_shorter)
    size = prep.image_size
    left = (new_size[0] - size) // 2
    top = (new_size[1] - size) // 2
    if max(new_size) <= _MAX_WHOLE_RESIZE_ASPECT * prep.resize_shorter:
        resized = rgb.resize(new_size, Image.Resampling.BILINEAR, reducing_gap=None)
        cropped = resized.crop((left, top, left + size, top + size))
    else:
        cropped = _resize_crop_region(rgb, new_size, (left, top), size)

    pixels = np.asarray(cropped, dtype=np.float32)
    if flip:
        pixels = pixels[:, ::-1, :]
    pixels = (pixels - np.float32(prep.mean)) / np.float32(prep.std)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)


def preprocess_batch(images: Sequence[Image.Image], prep: Preprocessing) -> np.ndarray:
    """Preprocess several images into one batch; see :func:`preprocess_image`.

    Parameters
    ----------
    images : sequence of PIL.Image.Image
        The images.
    prep : Preprocessing
        Resize, crop and normalisation settings.

    Returns
    -------
    numpy.ndarray
        float32 array of shape ``(len(images), 3, image_size, image_size)``.
    """
    size = prep.image_size
    batch = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, img in enumerate(images):
        batch[i] = preprocess_image(img, prep)
    return batch


def _resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    # Integer round-half-up of long * shorter / short, so the result never depends on
    # float rounding; the long side can never fall below the short side.
    if width <= height:
        return shorter, max(shorter, (2 * height * shorter + width) // (2 * width))
    return max(shorter, (2 * width * shorter + height) // (2 * height)), shorter


def _resize_crop_region(
    rgb: Image.Image, new_size: tuple[int, int], offset: tuple[int, int], size: int
) -> Image.Image:
    # Resizing a long, thin image whole can need gigabytes (1x40000 pixels at a shorter
    # side of 256 is 256x10240000), so resample only the crop's region of the source.
    # Pillow takes the box as float32 and so places the filter slightly differently:
    # pixels may differ from the whole-image resize by a grey level or two, which is
    # why ordinary images keep the whole-image path.
    width, height = rgb.size
    new_w, new_h = new_size
    left, top = offset
    # Exact rational coordinates, correctly rounded, never past the image's edge.
    x0, x1 = left * width / new_w, (left + size) * width / new_w
    y0, y1 = top * height / new_h, (top + size) * height / new_h
    # Cut the source down first, with a margin wider than the bilinear filter's
    # support (one pixel, widened by the downscale factor), so the box Pillow sees has
    # small coordinates that float32 holds precisely; the filter never reaches the cut.
    margin_x = math.ceil(max(1.0, width / new_w)) + 1
    margin_y = math.ceil(max(1.0, height / new_h)) + 1
    cut_x = max(0, math.floor(x0) - margin_x)
    cut_y = max(0, math.floor(y0) - margin_y)
    region = rgb.crop(
        (cut_x, cut_y, min(width, math.ceil(x1) + margin_x), min(height, math.ceil(y1) + margin_y))
    )
    box = (x0 - cut_x, y0 - cut_y, x1 - cut_x, y1 - cut_y)
    return region.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=None)


def _format_number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


__all__ = ["Preprocessing", "preprocess_batch", "preprocess_image"]
