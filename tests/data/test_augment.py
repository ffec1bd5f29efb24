"""Shelf-photo augmentation: reproducible under a seed, inside the central region, right layout."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from skuscale.data.augment import ShelfAugment
from skuscale.data.images import load_image

OFF = {"flip": 0.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "blur": 0.0}


@pytest.fixture(scope="module")
def photo(real_images):
    return load_image(real_images[0])


def test_same_seed_same_view_other_seed_other_view(photo):
    aug = ShelfAugment(image_size=64)
    a = aug(photo, np.random.default_rng(7))
    b = aug(photo, np.random.default_rng(7))
    c = aug(photo, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 1e-3


def test_layout_and_normalisation(photo):
    view = ShelfAugment(image_size=48)(photo, np.random.default_rng(0))
    assert view.shape == (3, 48, 48) and view.dtype == np.float32
    # (pixel - 127) / 128 bounds every value to [-127/128, 1].
    assert view.min() >= -127 / 128 - 1e-6 and view.max() <= 1.0 + 1e-6


def test_crop_boxes_stay_inside_the_central_region():
    aug = ShelfAugment(region=0.8, scale=(0.2, 1.0))
    rng = np.random.default_rng(0)
    for _ in range(300):
        left, top, right, bottom = aug.crop_box(400, 300, rng)
        # Central square of 0.8 * 300 = 240 px: x in [80, 320], y in [30, 270].
        assert 80 - 1e-9 <= left < right <= 320 + 1e-9
        assert 30 - 1e-9 <= top < bottom <= 270 + 1e-9
        area = (right - left) * (bottom - top)
        assert 0.2 * 240**2 - 1e-6 <= area <= 240**2 + 1e-6


def test_full_scale_square_crop_without_jitter_is_the_resized_region():
    img = Image.fromarray(np.arange(100 * 100 * 3, dtype=np.uint8).reshape(100, 100, 3) % 251)
    aug = ShelfAugment(image_size=100, region=1.0, scale=(1.0, 1.0), ratio=(1.0, 1.0), **OFF)
    expected = (np.asarray(img, np.float32) - 127) / 128
    np.testing.assert_allclose(aug(img, np.random.default_rng(0)), expected.transpose(2, 0, 1), atol=1e-6)


def test_flip_mirrors(photo):
    fixed = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0)}
    plain = ShelfAugment(image_size=32, **fixed, **OFF)(photo, np.random.default_rng(3))
    flipped = ShelfAugment(image_size=32, **fixed, **{**OFF, "flip": 1.0})(photo, np.random.default_rng(3))
    np.testing.assert_allclose(flipped, plain[:, :, ::-1], atol=1e-6)


def test_jitter_and_blur_change_pixels_but_not_geometry(photo):
    fixed = {"image_size": 32, "scale": (1.0, 1.0), "ratio": (1.0, 1.0)}
    plain = ShelfAugment(**fixed, **OFF)(photo, np.random.default_rng(1))
    jittered = ShelfAugment(**fixed, **{**OFF, "brightness": 0.5, "blur": 1.0})(photo, np.random.default_rng(1))
    assert np.abs(jittered - plain).mean() > 0.01
    # Still the same scene: strongly correlated.
    assert np.corrcoef(plain.ravel(), jittered.ravel())[0, 1] > 0.8


def test_random_erasing_replaces_one_rectangle_and_nothing_else(photo):
    size, n = 48, 0
    for seed in range(20):
        plain = ShelfAugment(image_size=size)(photo, np.random.default_rng(seed))
        erased = ShelfAugment(image_size=size, erase=1.0)(photo, np.random.default_rng(seed))
        # Erasing draws after every other step, so the rest of the view is the plain one.
        changed = (plain != erased).any(axis=0)
        rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
        box = np.zeros_like(changed)
        box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
        np.testing.assert_array_equal(plain[:, ~box], erased[:, ~box])
        area = box.sum() / size**2
        assert 0.02 * 0.8 <= area <= 0.25 * 1.2
        assert np.all(np.abs(erased[:, box]) <= 1.0)
        np.testing.assert_array_equal(erased, ShelfAugment(image_size=size, erase=1.0)(photo,
                                                                                      np.random.default_rng(seed)))
        n += 1
    assert n == 20


def test_erasing_off_leaves_the_seeded_views_unchanged(photo):
    rng_a, rng_b = np.random.default_rng(4), np.random.default_rng(4)
    np.testing.assert_array_equal(ShelfAugment(image_size=32)(photo, rng_a),
                                  ShelfAugment(image_size=32, erase=0.0)(photo, rng_b))
    # Not one extra draw: the next view from either stream is the same too.
    assert rng_a.random() == rng_b.random()
    rng_c = np.random.default_rng(4)
    ShelfAugment(image_size=32, erase=0.5)(photo, rng_c)
    assert rng_c.random() != np.random.default_rng(4).random()


@pytest.mark.parametrize("bad", [
    {"region": 0.0}, {"region": 1.5}, {"scale": (0.9, 0.1)}, {"flip": 1.5}, {"brightness": 1.0},
    {"image_size": 4}, {"std": 0.0}, {"blur_radius": (2.0, 1.0)}, {"erase": 1.5}, {"erase": -0.1},
    {"erase_scale": (0.5, 0.1)}, {"erase_ratio": (0.0, 1.0)},
])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        ShelfAugment(**bad)
