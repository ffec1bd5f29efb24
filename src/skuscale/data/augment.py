"""Training-time augmentation of shelf and basket photos (numpy and Pillow only).

Every random draw comes from the ``numpy.random.Generator`` passed in, so a view is
reproducible from a seed. The output layout and normalisation are those of
:func:`skuscale.data.preprocess.preprocess_image`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from skuscale.data.images import to_rgb
from skuscale.data.preprocess import Preprocessing


def _check_range(name: str, low: float, high: float, *, lo: float, hi: float) -> None:
    if not (lo <= low <= high <= hi):
        raise ValueError(f"{name} must satisfy {lo} <= low <= high <= {hi}, got ({low}, {high})")


@dataclass(frozen=True)
class ShelfAugment:
    """Random resized crop, flip, colour and brightness jitter, blur and (optionally) random erasing.

    Parameters
    ----------
    image_size : int
        Side of the square output.
    region : float
        Crops are drawn inside the centred square of this share of the shorter side:
        products sit near the centre of these photos, and the evaluation view is the
        central ``CENTRE_CROP_FRACTION`` (0.7) of it.
    scale : (float, float)
        Range of the crop's area as a share of the region (as torchvision's
        ``RandomResizedCrop``; Szegedy et al., "Going deeper with convolutions", 2015).
    ratio : (float, float)
        Range of the crop's aspect ratio, sampled log-uniformly.
    flip : float
        Probability of a left-right mirror (pack text reads mirrored, but the shape,
        colour and layout cues that separate SKUs survive).
    brightness, contrast, saturation : float
        Each factor is drawn uniformly from ``[1 - x, 1 + x]`` (store lighting varies).
    blur : float
        Probability of a Gaussian blur (motion and focus blur of handheld shots).
    blur_radius : (float, float)
        Range of the blur radius in output pixels.
    erase : float
        Probability of random erasing (Zhong et al., "Random erasing data augmentation",
        AAAI 2020): a rectangle of the view is replaced by uniform noise, as a hand, a
        price label or another product would hide part of the pack. 0 (the default) draws
        nothing, so the other draws of a seed stay as they were.
    erase_scale : (float, float)
        Range of the erased area as a share of the view.
    erase_ratio : (float, float)
        Range of the erased rectangle's aspect ratio, sampled log-uniformly.
    mean, std : float
        Normalisation, as in :class:`~skuscale.data.preprocess.Preprocessing`.
    """

    image_size: int = 224
    region: float = 0.85
    scale: tuple[float, float] = (0.4, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    blur: float = 0.2
    blur_radius: tuple[float, float] = (0.1, 1.5)
    erase: float = 0.0
    erase_scale: tuple[float, float] = (0.02, 0.25)
    erase_ratio: tuple[float, float] = (0.3, 3.3)
    mean: float = 127.0
    std: float = 128.0

    def __post_init__(self) -> None:
        if isinstance(self.image_size, bool) or int(self.image_size) != self.image_size or self.image_size < 8:
            raise ValueError(f"image_size must be an integer >= 8, got {self.image_size!r}")
        if not 0 < self.region <= 1:
            raise ValueError(f"region must be in (0, 1], got {self.region!r}")
        _check_range("scale", *self.scale, lo=1e-3, hi=1.0)
        _check_range("ratio", *self.ratio, lo=0.1, hi=10.0)
        _check_range("blur_radius", *self.blur_radius, lo=0.0, hi=50.0)
        _check_range("erase_scale", *self.erase_scale, lo=1e-3, hi=1.0)
        _check_range("erase_ratio", *self.erase_ratio, lo=0.1, hi=10.0)
        for name in ("flip", "blur", "erase"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a probability, got {getattr(self, name)!r}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not self.std > 0:
            raise ValueError(f"std must be positive, got {self.std!r}")

    @classmethod
    def matching(cls, prep: Preprocessing, **overrides) -> ShelfAugment:
        """Augmentation producing the size and normalisation of ``prep``."""
        return cls(image_size=prep.image_size, mean=prep.mean, std=prep.std, **overrides)

    def crop_box(self, width: int, height: int, rng: np.random.Generator) -> tuple[float, float, float, float]:
        """A random crop box ``(left, top, right, bottom)`` inside the central region."""
        side = self.region * min(width, height)
        x0, y0 = (width - side) / 2, (height - side) / 2
        area = side * side
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w, h = math.sqrt(target * aspect), math.sqrt(target / aspect)
            if w <= side and h <= side:
                left = x0 + rng.uniform(0, side - w)
                top = y0 + rng.uniform(0, side - h)
                return left, top, left + w, top + h
        return x0, y0, x0 + side, y0 + side

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> np.ndarray:
        """One augmented view as a ``(3, image_size, image_size)`` float32 array.

        Parameters
        ----------
        img : PIL.Image.Image
        rng : numpy.random.Generator
            Source of every random draw.
        """
        img = to_rgb(img)
        box = self.crop_box(img.width, img.height, rng)
        size = int(self.image_size)
        view = img.resize((size, size), Image.Resampling.BILINEAR, box=box)
        if rng.random() < self.flip:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        # Jitter in a random order, as the three operations do not commute.
        for op in rng.permutation(3):
            amount = (self.brightness, self.contrast, self.saturation)[op]
            if amount > 0:
                factor = float(rng.uniform(1 - amount, 1 + amount))
                enhancer = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)[op]
                view = enhancer(view).enhance(factor)
        if rng.random() < self.blur:
            view = view.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(*self.blur_radius))))
        arr = (np.asarray(view, dtype=np.float32) - np.float32(self.mean)) / np.float32(self.std)
        arr = np.ascontiguousarray(arr.transpose(2, 0, 1))
        if self.erase and rng.random() < self.erase:
            top, left, h, w = self.erase_box(size, rng)
            arr[:, top:top + h, left:left + w] = rng.uniform(-1.0, 1.0, size=(3, h, w)).astype(np.float32)
        return arr

    def erase_box(self, size: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """A random ``(top, left, height, width)`` rectangle inside a ``size`` x ``size`` view."""
        log_ratio = (math.log(self.erase_ratio[0]), math.log(self.erase_ratio[1]))
        area = size * size * rng.uniform(*self.erase_scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        h = min(size, max(1, round(math.sqrt(area / aspect))))
        w = min(size, max(1, round(math.sqrt(area * aspect))))
        top = int(rng.integers(0, size - h + 1))
        left = int(rng.integers(0, size - w + 1))
        return top, left, h, w
