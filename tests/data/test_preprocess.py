from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import skuscale.data
from skuscale.data import Preprocessing, preprocess_batch, preprocess_image


def _random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_output_shape_dtype_and_layout():
    out = preprocess_image(_random_image(300, 200), Preprocessing())

    assert out.shape == (3, 224, 224)
    assert out.dtype == np.float32
    assert out.flags["C_CONTIGUOUS"]


@pytest.mark.parametrize(("value", "expected"), [(127, 0.0), (255, 1.0), (0, -127 / 128)])
def test_known_answer_for_constant_images(value, expected):
    img = Image.new("RGB", (320, 240), (value, value, value))

    out = preprocess_image(img, Preprocessing())

    np.testing.assert_array_equal(out, np.full((3, 224, 224), expected, dtype=np.float32))


def test_flip_mirrors_the_array():
    img = _random_image(250, 300)
    prep = Preprocessing()

    np.testing.assert_array_equal(
        preprocess_image(img, prep, flip=True), preprocess_image(img, prep)[:, :, ::-1]
    )


@pytest.mark.parametrize(("width", "height"), [(100, 60), (60, 101)])
def test_centre_crop_of_non_square_image(width, height):
    # Shorter side already equals resize_shorter, so only the crop changes the pixels;
    # each pixel's red value is its x (or y) coordinate.
    coords = np.arange(max(width, height), dtype=np.uint8)
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    if width > height:
        pixels[..., 0] = coords[None, :width]
    else:
        pixels[..., 0] = coords[:height, None]
    prep = Preprocessing(image_size=60, resize_shorter=60, mean=0.0, std=1.0)

    red = preprocess_image(Image.fromarray(pixels), prep)[0]

    offset = (max(width, height) - 60) // 2
    expected = np.arange(offset, offset + 60, dtype=np.float32)
    if width > height:
        np.testing.assert_array_equal(red, np.broadcast_to(expected[None, :], (60, 60)))
    else:
        np.testing.assert_array_equal(red, np.broadcast_to(expected[:, None], (60, 60)))


def test_matches_resize_then_centre_crop_by_hand():
    img = _random_image(400, 300, seed=3)
    # Shorter side 300 -> 256, longer side 400 * 256 / 300 = 341.33 -> 341.
    by_hand = img.resize((341, 256), Image.Resampling.BILINEAR, reducing_gap=None)
    by_hand = by_hand.crop((58, 16, 58 + 224, 16 + 224))
    expected = ((np.asarray(by_hand, dtype=np.float32) - 127) / 128).transpose(2, 0, 1)

    np.testing.assert_array_equal(preprocess_image(img, Preprocessing()), expected)


def _resize_then_crop(img: Image.Image, prep: Preprocessing) -> np.ndarray:
    width, height = img.size
    short = min(width, height)
    # Shorter side to resize_shorter, the other side scaled and rounded half up.
    new_w = max(prep.resize_shorter, (2 * width * prep.resize_shorter + short) // (2 * short))
    new_h = max(prep.resize_shorter, (2 * height * prep.resize_shorter + short) // (2 * short))
    left, top = (new_w - prep.image_size) // 2, (new_h - prep.image_size) // 2
    resized = img.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=None)
    cropped = resized.crop((left, top, left + prep.image_size, top + prep.image_size))
    return ((np.asarray(cropped, dtype=np.float32) - prep.mean) / prep.std).transpose(2, 0, 1)


def test_long_thin_image_is_never_resized_whole(monkeypatch, encode):
    from skuscale.data import decode_image

    # A 1x40000 PNG is a few hundred bytes, but resized whole to a shorter side of
    # 256 it would be 256x10240000 pixels (gigabytes).
    img = decode_image(encode(Image.new("RGB", (1, 40_000), (200, 100, 50)), "PNG"))
    requested = []
    original_resize = Image.Image.resize

    def bounded_resize(self, size, *args, **kwargs):
        requested.append(tuple(size))
        if size[0] * size[1] > 1_000_000:
            raise MemoryError(f"test refuses to resize to {size}")
        return original_resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", bounded_resize)
    for image in (img, img.transpose(Image.Transpose.TRANSPOSE)):
        out = preprocess_image(image, Preprocessing())

        expected = (np.array([200, 100, 50], dtype=np.float32) - 127) / 128
        np.testing.assert_array_equal(out, np.broadcast_to(expected[:, None, None], (3, 224, 224)))
    assert requested == [(224, 224), (224, 224)]


@pytest.mark.parametrize(("width", "height"), [(3, 400), (400, 3), (7, 1201)])
def test_long_thin_image_is_close_to_the_whole_image_resize(width, height):
    img = _random_image(width, height, seed=width)
    prep = Preprocessing(image_size=32, resize_shorter=36)

    out = preprocess_image(img, prep)

    # Pillow places a resize box in float32, so a pixel may move by up to two grey levels.
    np.testing.assert_allclose(out, _resize_then_crop(img, prep), rtol=0, atol=2 / 128 + 1e-6)


@pytest.mark.parametrize(("width", "height"), [(1, 64), (64, 1), (5, 320)])
def test_images_up_to_64_to_1_are_still_resized_whole(width, height):
    img = _random_image(width, height, seed=height)
    prep = Preprocessing(image_size=32, resize_shorter=36)

    np.testing.assert_array_equal(preprocess_image(img, prep), _resize_then_crop(img, prep))


def test_rgba_input_is_composited_on_white():
    img = Image.new("RGBA", (256, 256), (0, 0, 0, 0))

    out = preprocess_image(img, Preprocessing())

    np.testing.assert_array_equal(out, np.ones((3, 224, 224), dtype=np.float32))


def test_batch_stacks_single_results():
    images = [_random_image(300, 260, seed=1), _random_image(256, 400, seed=2)]
    prep = Preprocessing(image_size=32, resize_shorter=40)

    batch = preprocess_batch(images, prep)

    assert batch.shape == (2, 3, 32, 32)
    assert batch.dtype == np.float32
    for row, img in zip(batch, images, strict=True):
        np.testing.assert_array_equal(row, preprocess_image(img, prep))
    assert preprocess_batch([], prep).shape == (0, 3, 32, 32)


def test_real_image_is_preprocessed_deterministically(real_rows):
    from skuscale.data import load_image

    img = load_image(real_rows[0]["path"])
    first = preprocess_image(img, Preprocessing())
    second = preprocess_image(load_image(real_rows[0]["path"]), Preprocessing())

    np.testing.assert_array_equal(first, second)
    assert first.min() >= -1.0 and first.max() <= 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_size": 0},
        {"image_size": -5},
        {"image_size": 224.0},
        {"image_size": True},
        {"resize_shorter": 200},
        {"std": 0.0},
        {"std": -1.0},
        {"std": float("nan")},
        {"mean": float("inf")},
        {"mean": "127"},
    ],
)
def test_invalid_settings_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        Preprocessing(**kwargs)


def test_fingerprint_is_stable_and_distinguishes_settings():
    assert Preprocessing().fingerprint() == "lite-224-256-127-128-v1"
    assert Preprocessing(mean=127, std=128).fingerprint() == Preprocessing().fingerprint()
    assert Preprocessing(mean=127.5).fingerprint() == "lite-224-256-127.5-128-v1"
    assert Preprocessing(image_size=256).fingerprint() != Preprocessing().fingerprint()


def test_dict_round_trip_through_json():
    prep = Preprocessing(image_size=192, resize_shorter=220, mean=127.5, std=127.5)

    restored = Preprocessing.from_dict(json.loads(json.dumps(prep.to_dict())))

    assert restored == prep
    assert restored.fingerprint() == prep.fingerprint()


def test_from_dict_rejects_missing_or_unknown_keys():
    settings = Preprocessing().to_dict()
    with pytest.raises(ValueError, match="unknown"):
        Preprocessing.from_dict({**settings, "interpolation": "bicubic"})
    del settings["std"]
    with pytest.raises(ValueError, match="missing"):
        Preprocessing.from_dict(settings)


def test_package_exports_and_does_not_import_torch():
    for name in skuscale.data.__all__:
        assert hasattr(skuscale.data, name)
    probe = "import sys, skuscale.data; sys.exit('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], check=False)
    assert result.returncode == 0, "importing skuscale.data imported torch"
