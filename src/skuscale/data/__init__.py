"""Reading, validating, decoding and preprocessing product images.

Needs only numpy and Pillow, so the serving path can use it without torch.
"""

from skuscale.data.embeddings import EmbeddingDataset, load_embeddings, save_embeddings
from skuscale.data.images import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    decode_image,
    load_image,
    read_image_bytes,
    to_rgb,
)
from skuscale.data.manifest import (
    Dataset,
    Item,
    load_dataset,
    read_image_folder,
    read_manifest,
    validate_dataset,
)
from skuscale.data.preprocess import Preprocessing, preprocess_batch, preprocess_image

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "Dataset",
    "EmbeddingDataset",
    "Item",
    "Preprocessing",
    "decode_image",
    "load_dataset",
    "load_embeddings",
    "load_image",
    "preprocess_batch",
    "preprocess_image",
    "read_image_bytes",
    "read_image_folder",
    "read_manifest",
    "save_embeddings",
    "to_rgb",
    "validate_dataset",
]
