"""Content-addressed embedding cache."""

from __future__ import annotations

import numpy as np

from skuscale.data.preprocess import Preprocessing
from skuscale.embed.cache import EmbeddingCache, content_key
from skuscale.embed.pipeline import embed_paths


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
