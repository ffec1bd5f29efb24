from __future__ import annotations

import hashlib
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from skuscale.data import decode_image, load_image, read_image_bytes
from skuscale.data.images import DEFAULT_MAX_PIXELS, check_image_file, hash_image_file
from skuscale.exceptions import ImageError, ImageTooLargeError

ORIENTATION_TAG = 0x0112


def test_exif_orientation_is_applied(encode):
    # Left half red, right half blue; orientation 6 means "rotate 90 degrees clockwise
    # to display", which puts the left (red) edge on top.
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[ORIENTATION_TAG] = 6
    data = encode(img, "JPEG", exif=exif, quality=95)

    decoded = decode_image(data)

    assert decoded.size == (20, 40)
    top = np.asarray(decoded)[2, 10]
    bottom = np.asarray(decoded)[-3, 10]
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("L", "PNG"),
        ("LA", "PNG"),
        ("1", "PNG"),
        ("I;16", "PNG"),
        ("I", "TIFF"),
        ("P", "PNG"),
        ("CMYK", "JPEG"),
        ("RGBA", "PNG"),
        ("RGB", "PNG"),
    ],
)
def test_every_colour_mode_decodes_to_rgb(mode, fmt, encode):
    img = Image.new("RGB", (6, 4), (90, 90, 90)).convert(mode)

    decoded = decode_image(encode(img, fmt))

    assert decoded.mode == "RGB"
    assert decoded.size == (6, 4)


def test_sixteen_bit_greyscale_is_scaled_not_clipped(encode):
    values = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    img = Image.fromarray(values)
    assert img.mode.startswith("I;16")

    decoded = np.asarray(decode_image(encode(img, "PNG")))

    assert decoded[0, :, 0].tolist() == [0, 128, 255]


def test_transparent_pixels_become_white(encode):
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (0, 0, 0, 0)  # fully transparent
    rgba[0, 2] = (0, 0, 0, 128)  # half-transparent black
    decoded = np.asarray(decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG")))

    assert decoded[0, 0].tolist() == [255, 0, 0]
    assert decoded[0, 1].tolist() == [255, 255, 255]
    assert all(120 <= v <= 135 for v in decoded[0, 2])


def test_palette_transparency_becomes_white(encode):
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    img.info["transparency"] = 0

    decoded = np.asarray(decode_image(encode(img, "PNG", transparency=0)))

    assert decoded[0, 0].tolist() == [255, 255, 255]
    assert decoded[0, 1].tolist() == [10, 200, 30]


def test_byte_limit(encode, tmp_path):
    data = encode(Image.new("RGB", (16, 16), (1, 2, 3)), "PNG")
    with pytest.raises(ImageTooLargeError, match="bytes"):
        decode_image(data, max_bytes=len(data) - 1)
    assert decode_image(data, max_bytes=len(data)).size == (16, 16)

    path = tmp_path / "img.png"
    path.write_bytes(data)
    with pytest.raises(ImageTooLargeError):
        read_image_bytes(path, max_bytes=len(data) - 1)
    assert read_image_bytes(path) == data


def test_pixel_limit_is_checked_before_decoding(encode, monkeypatch):
    data = encode(Image.new("L", (5000, 5000)), "PNG")

    def fail_if_decoded(self, *args, **kwargs):
        raise AssertionError("pixels were decoded despite the pixel limit")

    monkeypatch.setattr(ImageFile.ImageFile, "load", fail_if_decoded)
    with pytest.raises(ImageTooLargeError, match="5000x5000"):
        decode_image(data, max_pixels=1_000_000)


@pytest.mark.parametrize("size", [(15, 10), (20, 20)], ids=["bomb-warning", "bomb-error"])
def test_pillow_decompression_bomb_becomes_too_large(size, encode, monkeypatch):
    data = encode(Image.new("RGB", size), "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)

    with pytest.raises(ImageTooLargeError):
        decode_image(data)
    # With a pixel limit above Pillow's, Pillow's limit still applies, and the message says so.
    with pytest.raises(ImageTooLargeError, match=f"{size[0] * size[1]} pixels, over Pillow's decompression-bomb"):
        decode_image(data, max_pixels=1000)


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with no pixel data to speak of."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("size", "pixels"),
    [((8000, 6250), "8000x6250 = 50000000"), ((10000, 10000), "10000x10000 = 100000000"),
     ((20000, 20000), "400000000")],
    ids=["under-pillow-limit", "over-pillow-warning-limit", "over-pillow-error-limit"],
)
def test_over_max_pixels_names_the_configured_limit_not_pillows(size, pixels):
    """The configured limit is checked first: Pillow's (89478485, or twice that) never shows."""
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(_png_header(*size))
    message = str(info.value)
    assert f"image is {pixels} pixels, over the limit of {DEFAULT_MAX_PIXELS} pixels" in message, message
    assert str(Image.MAX_IMAGE_PIXELS) not in message and "bomb" not in message
    with pytest.raises(ImageTooLargeError, match=f"{pixels} pixels, over the limit of 1000 pixels"):
        decode_image(_png_header(*size), max_pixels=1000)


def test_empty_bytes():
    with pytest.raises(ImageError, match="empty image data") as info:
        decode_image(b"")
    assert not isinstance(info.value, ImageTooLargeError)


def test_non_image_bytes():
    with pytest.raises(ImageError, match="not a recognised image"):
        decode_image(b"this is a text file, not a picture" * 10)


def test_truncated_real_jpeg(real_jpeg_bytes):
    with pytest.raises(ImageError, match="truncated"):
        decode_image(real_jpeg_bytes[: len(real_jpeg_bytes) // 2])


def test_load_real_image(real_rows):
    img = load_image(real_rows[0]["path"])
    assert img.mode == "RGB"
    assert min(img.size) >= 100


def test_load_image_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ImageError, match=re.escape(str(missing))):
        load_image(missing)

    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(ImageError, match=r"corrupt\.png"):
        load_image(corrupt)

    with pytest.raises(ImageError, match="not a regular file"):
        read_image_bytes(tmp_path)


def test_decode_rejects_non_bytes():
    with pytest.raises(TypeError):
        decode_image(str(Path("image.jpg")))  # type: ignore[arg-type]


def _jpeg_with_malformed_exif(encode) -> bytes:
    # Orientation 6 plus a text value retagged as TileLength, an integer tag: Pillow's
    # EXIF writer then fails with struct.error when exif_transpose re-serialises it.
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6
    exif[0x0110] = "X" * 40
    raw = exif.tobytes().replace(b"\x01\x10\x00\x02", b"\x01\x43\x00\x02")
    return encode(Image.new("RGB", (16, 24), (1, 2, 3)), "JPEG", exif=raw)


def test_malformed_exif_is_ignored_and_the_image_still_decodes(encode, tmp_path):
    data = _jpeg_with_malformed_exif(encode)

    decoded = decode_image(data)

    assert decoded.mode == "RGB"
    assert decoded.size == (16, 24)
    path = tmp_path / "bad_exif.jpg"
    path.write_bytes(data)
    assert load_image(path).size == (16, 24)


def test_unexpected_decoder_exception_becomes_image_error(encode, monkeypatch):
    data = encode(Image.new("RGB", (4, 4)), "PNG")

    def broken_plugin(self, *args, **kwargs):
        raise struct.error("unpack requires a buffer of 4 bytes")

    monkeypatch.setattr(ImageFile.ImageFile, "load", broken_plugin)
    with pytest.raises(ImageError, match="image data is corrupt: unpack requires"):
        decode_image(data)


def test_hash_image_file_streams_the_same_digest_and_keeps_the_limit(encode, tmp_path):
    data = encode(Image.new("RGB", (30, 20), (5, 6, 7)), "PNG")
    path = tmp_path / "img.png"
    path.write_bytes(data)

    assert hash_image_file(path) == hashlib.sha256(data).digest()
    assert check_image_file(path) == len(data)
    with pytest.raises(ImageTooLargeError, match=r"img\.png"):
        hash_image_file(path, max_bytes=len(data) - 1)
    with pytest.raises(ImageError, match="not a regular file"):
        hash_image_file(tmp_path)
    with pytest.raises(ImageError, match="not found"):
        check_image_file(tmp_path / "nope.png")
