"""Content-addressed embedding cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skuscale.data.images import read_image_bytes
from skuscale.data.preprocess import Preprocessing
from skuscale.embed import pipeline
from skuscale.embed.cache import EmbeddingCache, content_key, file_content_key
from skuscale.embed.pipeline import embed_paths
from skuscale.exceptions import ImageError, ImageTooLargeError


class CountingEmbedder:
    """Embeds a batch as its per-channel means; counts the images it saw."""

    def __init__(self, identity="fake-1"):
        self.identity = identity
        self.preprocessing = Preprocessing(image_size=32, resize_shorter=36)
        self.seen = 0

    def embed_batch(self, batch):
        self.seen += batch.shape[0]
        return batch.mean(axis=(2, 3)).astype(np.float32)


def test_key_depends_on_bytes_backbone_and_preprocessing():
    base = content_key(b"abc", "b1", "p1")
    assert base == content_key(b"abc", "b1", "p1")
    assert len({base, content_key(b"abd", "b1", "p1"), content_key(b"abc", "b2", "p1"),
                content_key(b"abc", "b1", "p2")}) == 4


def test_second_pass_reads_the_cache(tmp_path, real_images):
    cache = EmbeddingCache(tmp_path / "c")
    emb = CountingEmbedder()
    first = embed_paths(real_images, emb, cache=cache, batch_size=3)
    assert emb.seen == len(real_images)
    second = embed_paths(real_images, emb, cache=cache, batch_size=3)
    assert emb.seen == len(real_images)
    np.testing.assert_array_equal(first, second)
    assert cache.hits == len(real_images)


def test_cache_survives_a_rename_and_misses_on_new_backbone(tmp_path, real_images):
    cache = EmbeddingCache(tmp_path / "c")
    copy = tmp_path / "renamed.jpg"
    copy.write_bytes(real_images[0].read_bytes())
    embed_paths(real_images[:1], CountingEmbedder(), cache=cache)
    emb = CountingEmbedder()
    embed_paths([copy], emb, cache=cache)
    assert emb.seen == 0
    other = CountingEmbedder(identity="fake-2")
    embed_paths([copy], other, cache=cache)
    assert other.seen == 1


def test_corrupt_cache_entry_is_recomputed(tmp_path, real_images):
    cache = EmbeddingCache(tmp_path / "c")
    emb = CountingEmbedder()
    embed_paths(real_images[:1], emb, cache=cache)
    entry = next((tmp_path / "c").rglob("*.npy"))
    entry.write_bytes(b"garbage")
    again = embed_paths(real_images[:1], emb, cache=cache)
    assert emb.seen == 2
    assert again.shape == (1, 3)


def test_progress_counts_every_image(tmp_path, real_images):
    done = []
    embed_paths(real_images, CountingEmbedder(), cache=EmbeddingCache(tmp_path), batch_size=3, progress=done.append)
    assert sum(done) == len(real_images)


def _tiny_pngs(folder, n):
    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.new("RGB", (40, 30 + i), (10 * i, 100, 200 - 10 * i)).save(path)
        paths.append(path)
    return paths


def test_file_content_key_equals_the_key_of_the_bytes(tmp_path):
    path = _tiny_pngs(tmp_path, 1)[0]

    assert file_content_key(path, "b1", "p1") == content_key(path.read_bytes(), "b1", "p1")


def test_only_cache_misses_are_read_whole(tmp_path, monkeypatch):
    paths = _tiny_pngs(tmp_path, 5)
    cache = EmbeddingCache(tmp_path / "c")
    first = embed_paths(paths[:2], CountingEmbedder(), cache=cache)
    read = []

    def counting_read(path, **kwargs):
        read.append(Path(path).name)
        return read_image_bytes(path, **kwargs)

    def no_whole_file_reads(self):
        raise AssertionError(f"{self} was read whole")

    monkeypatch.setattr(Path, "read_bytes", no_whole_file_reads)
    monkeypatch.setattr(pipeline, "read_image_bytes", counting_read, raising=False)
    emb = CountingEmbedder()

    out = embed_paths(paths, emb, cache=cache, batch_size=2)

    assert sorted(read) == ["img2.png", "img3.png", "img4.png"]
    assert emb.seen == 3
    np.testing.assert_array_equal(out[:2], first)
    monkeypatch.undo()
    np.testing.assert_array_equal(out, embed_paths(paths, CountingEmbedder()))


def test_size_limit_applies_to_cache_hits_and_misses(tmp_path):
    path = _tiny_pngs(tmp_path, 1)[0]
    cache = EmbeddingCache(tmp_path / "c")
    embed_paths([path], CountingEmbedder(), cache=cache)
    limit = path.stat().st_size - 1

    with pytest.raises(ImageTooLargeError, match=r"img0\.png"):
        embed_paths([path], CountingEmbedder(), cache=cache, max_bytes=limit)
    with pytest.raises(ImageTooLargeError, match=r"img0\.png"):
        embed_paths([path], CountingEmbedder(), max_bytes=limit)


@pytest.mark.parametrize("use_cache", [True, False])
def test_bad_files_fail_before_any_embedding_with_a_clear_error(tmp_path, use_cache):
    good = _tiny_pngs(tmp_path, 1)[0]
    missing = tmp_path / "missing.png"
    emb = CountingEmbedder()
    cache = EmbeddingCache(tmp_path / "c") if use_cache else None

    with pytest.raises(ImageError, match=r"missing\.png"):
        embed_paths([good, missing], emb, cache=cache)
    assert emb.seen == 0


def test_undecodable_file_error_names_the_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")

    with pytest.raises(ImageError, match=r"bad\.png: data is not a recognised image"):
        embed_paths([bad], CountingEmbedder(), cache=EmbeddingCache(tmp_path / "c"))


def test_a_file_changed_after_hashing_is_cached_under_its_new_content(tmp_path, monkeypatch):
    path = _tiny_pngs(tmp_path, 1)[0]
    cache = EmbeddingCache(tmp_path / "c")
    emb = CountingEmbedder()
    prep_id = emb.preprocessing.fingerprint()
    # The lookup saw older bytes; the embedding is of the bytes read afterwards.
    monkeypatch.setattr(pipeline, "file_content_key", lambda *args, **kwargs: content_key(b"old", "x", "y"))

    embed_paths([path], emb, cache=cache)

    assert not cache.contains(content_key(b"old", "x", "y"))
    assert cache.contains(content_key(path.read_bytes(), emb.identity, prep_id))
