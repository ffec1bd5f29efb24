"""Settings of backbone fine-tuning (no torch needed to read or validate them)."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

from skuscale.exceptions import SkuscaleError

LOSSES = ("ce", "logit_adjust", "cosface", "supcon")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
SAMPLERS = ("balanced", "uniform")

#: Epochs of the default build: measured on val (benchmarks/accuracy.py), 6 epochs
#: reach top-1 0.841, 12 0.855, 24 0.861; 12 fit a 2-core CPU's hour with room to spare.
DEFAULT_FINETUNE_EPOCHS = 12


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of :func:`finetune_backbone`; the defaults are the measured ones.

    Attributes
    ----------
    epochs : int
        Passes over the training images (an epoch draws as many views as there are
        images); 0 keeps the pretrained backbone.
    batch_size : int
    lr : float
        Peak AdamW learning rate of the backbone (Loshchilov & Hutter, ICLR 2019);
        linear warm-up, then cosine decay to zero.
    head_lr_multiplier : float
        The classifier's learning rate is ``lr`` times this.
    weight_decay : float
    warmup_epochs : float
    label_smoothing : float
        Szegedy et al., "Rethinking the Inception architecture", CVPR 2016.
    loss : {"ce", "logit_adjust", "cosface", "supcon"}
        Cross-entropy; logit-adjusted cross-entropy (Menon et al., ICLR 2021), which
        adds ``log prior`` to the logits while training; a large-margin cosine loss
        (CosFace: Wang et al., CVPR 2018) that subtracts ``cosface_margin`` from the
        true class's cosine, to push near-duplicate SKUs apart; or cross-entropy plus
        ``supcon_weight`` times the supervised contrastive loss on the normalised
        pooled features (Khosla et al., NeurIPS 2020), which pulls views of one SKU
        together and pushes the other SKUs of the batch away. With ``"supcon"`` a batch
        holds ``batch_size / views_per_class`` SKUs, ``views_per_class`` views each.
    sampler : {"balanced", "uniform"}
        Class-balanced draws (every SKU equally often) or draws by image. ``"supcon"``
        needs ``"balanced"``.
    cosface_scale, cosface_margin : float
    supcon_weight, supcon_temperature : float
        Weight of the contrastive term next to cross-entropy, and its temperature.
    views_per_class : int
        Views of one SKU in a ``"supcon"`` batch (drawn with replacement, each
        augmented on its own).
    mixup_alpha : float
        Mixup (Zhang et al., "mixup: Beyond empirical risk minimization", ICLR 2018):
        each batch is blended with a shuffled copy of itself by ``lam ~ Beta(alpha,
        alpha)`` and the loss is ``lam`` times that of the first labels plus ``1 - lam``
        times that of the second. Trained this way, networks are less over-confident,
        also on inputs unlike their training data (Thulasidasan et al., NeurIPS 2019).
        0 (the default) switches it off; only for ``"ce"`` and ``"logit_adjust"``.
    random_erase : float
        Probability that a training view gets a rectangle replaced by noise
        (:class:`skuscale.data.augment.ShelfAugment`'s ``erase``; Zhong et al., AAAI 2020).
        0 (the default) switches it off.
    reference_weight : float
        How many training photos one reference pack shot counts as when drawing.
    image_size : int or None
        Training resolution (default: the backbone's).
    region : float
        See :class:`skuscale.data.augment.ShelfAugment`.
    dropout : float
        Dropout on the pooled features before the classifier.
    device : str
        ``"auto"`` (CUDA when torch sees a GPU, else CPU), ``"cpu"`` or ``"cuda"``.
    workers : int or None
        Data-loading processes (default: none on CPU, where augmentation is cheap next
        to the backward pass; up to 8 on a GPU).
    seed : int
    """

    epochs: int = 0
    batch_size: int = 32
    lr: float = 5e-4
    head_lr_multiplier: float = 10.0
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.1
    loss: str = "ce"
    sampler: str = "balanced"
    cosface_scale: float = 30.0
    cosface_margin: float = 0.2
    supcon_weight: float = 0.5
    supcon_temperature: float = 0.1
    views_per_class: int = 4
    mixup_alpha: float = 0.0
    random_erase: float = 0.0
    reference_weight: float = 4.0
    image_size: int | None = None
    region: float = 0.85
    dropout: float = 0.2
    device: str = "auto"
    workers: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not _is_int(self.epochs) or self.epochs < 0:
            raise ValueError(f"epochs must be a non-negative integer, got {self.epochs!r}")
        if not _is_int(self.batch_size) or self.batch_size < 2:
            raise ValueError(f"batch_size must be an integer >= 2, got {self.batch_size!r}")
        if self.image_size is not None and (not _is_int(self.image_size) or self.image_size < 32):
            raise ValueError(f"image_size must be an integer >= 32 or None, got {self.image_size!r}")
        if not 0 < self.region <= 1:
            raise ValueError(f"region is a share of the photo's shorter side, in (0, 1], got {self.region!r}")
        for name in ("lr", "head_lr_multiplier", "cosface_scale", "supcon_temperature", "weight_decay",
                     "warmup_epochs", "cosface_margin", "reference_weight", "supcon_weight", "mixup_alpha"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.loss == "logit_adjust" and self.sampler == "balanced":
            # Balanced draws already give every SKU the same prior; adjusting for the data's
            # prior on top would push the classifier toward the rare SKUs.
            raise ValueError("loss 'logit_adjust' needs sampler 'uniform' (balanced sampling already removes "
                             "the class prior it corrects for)")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.loss == "supcon":
            if self.sampler != "balanced":
                raise ValueError("loss 'supcon' needs sampler 'balanced'")
            if (isinstance(self.views_per_class, bool) or int(self.views_per_class) != self.views_per_class
                    or self.views_per_class < 2):
                raise ValueError(f"views_per_class must be an integer >= 2, got {self.views_per_class!r}")
            if self.batch_size % self.views_per_class or self.batch_size // self.views_per_class < 2:
                raise ValueError(f"with loss 'supcon' the batch size ({self.batch_size}) must be a multiple of "
                                 f"views_per_class ({self.views_per_class}) that holds at least 2 SKUs")
        for name in ("lr", "head_lr_multiplier", "cosface_scale", "supcon_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.mixup_alpha and self.loss not in ("ce", "logit_adjust"):
            raise ValueError(f"mixup applies to losses 'ce' and 'logit_adjust', not {self.loss!r}")
        for name in ("weight_decay", "warmup_epochs", "cosface_margin", "reference_weight", "supcon_weight",
                     "mixup_alpha"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)!r}")
        if not 0 <= self.random_erase <= 1:
            raise ValueError(f"random_erase is a probability, got {self.random_erase!r}")
        for name in ("label_smoothing", "dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        """The settings as a JSON-able dict."""
        return asdict(self)

    def steps_per_epoch(self, n_images: int) -> int:
        """Optimiser steps in one epoch over ``n_images`` (an epoch draws that many views)."""
        return max(1, int(n_images) // int(self.batch_size))

    def resolved_device(self) -> str:
        """``"cuda"`` or ``"cpu"``; raises :class:`SkuscaleError` if CUDA is asked for but absent."""
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cuda" and not torch.cuda.is_available():
            raise SkuscaleError("fine-tuning on 'cuda' was asked for, but torch sees no GPU")
        return self.device
