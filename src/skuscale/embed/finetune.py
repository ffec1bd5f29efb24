"""Fine-tuning the backbone on SKU photos (torch).

The classifier trained here is thrown away: only the backbone's pooled features go
on, and the rest of the stack (head, calibration, OOD, thresholds) is fitted on them
as on frozen features. The classifier starts from a linear probe on the frozen
features (LP-FT: Kumar et al., "Fine-Tuning can Distort Pretrained Features and
Underperform Out-of-Distribution", ICLR 2022), so fine-tuning starts from a good head
rather than tearing the features apart to fit a random one.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F  # noqa: N812 - torch's own convention

from skuscale.data.augment import ShelfAugment
from skuscale.data.preprocess import Preprocessing, preprocess_image
from skuscale.data.sampling import balanced_indices, grouped_balanced_indices, uniform_indices
from skuscale.embed.backbone import CENTRE_CROP_FRACTION, EmbeddingNet
from skuscale.embed.finetune_config import LOSSES, SAMPLERS, FinetuneConfig
from skuscale.exceptions import SkuscaleError

__all__ = ["LOSSES", "SAMPLERS", "FinetuneConfig", "FinetuneReport", "finetune_backbone", "mixup_batch", "supcon_loss"]

#: Called after every optimiser step with (steps done, total steps, running loss).
StepProgress = Callable[[int, int, float], None]


@dataclass
class FinetuneReport:
    """What a fine-tuning run did."""

    device: str
    epochs: int
    steps: int
    seconds: float
    images: int
    classes: int
    epoch_loss: list[float] = field(default_factory=list)
    epoch_train_top1: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class _Classifier(nn.Module):
    """Backbone plus a classifier on L2-normalised pooled features."""

    def __init__(self, backbone: EmbeddingNet, weight: torch.Tensor, bias: torch.Tensor, *, cosine: bool,
                 dropout: float):
        super().__init__()
        self.backbone = backbone
        self.weight = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(bias.clone(), requires_grad=not cosine)
        self.cosine = cosine
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the L2-normalised pooled features (before dropout)."""
        features = F.normalize(self.backbone(x).float(), dim=1)
        f = self.dropout(features)
        if self.cosine:
            # Dropout rescales the kept entries, so the features are normalised again: the margin is on cosines.
            return F.normalize(f, dim=1) @ F.normalize(self.weight, dim=1).T, features
        return f @ self.weight.T + self.bias, features


def sampling_log_prior(y: np.ndarray, weights: np.ndarray, n_classes: int) -> np.ndarray:
    """Log class prior of the uniform sampler's draws: each image counts with its weight.

    This is the prior that logit adjustment (Menon et al., ICLR 2021) corrects for; a
    class without images gets the weight of one image, so its log stays finite.
    """
    counts = np.bincount(y, weights=weights, minlength=n_classes).astype(np.float64)
    counts = np.where(counts > 0, counts, 1.0)
    return np.log(counts / counts.sum())


def supcon_loss(features: torch.Tensor, target: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., NeurIPS 2020, their L_out).

    For every anchor with at least one positive (another row of its class), the mean
    over its positives ``p`` of ``-log(exp(z_a . z_p / t) / sum_{b != a} exp(z_a . z_b / t))``;
    averaged over those anchors. Zero when no row has a positive.

    Parameters
    ----------
    features : Tensor (n, d)
        L2-normalised features.
    target : Tensor (n,)
        Class of every row.
    temperature : float
    """
    n = features.shape[0]
    sim = features @ features.T / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=features.device)
    # Subtracting the row maximum changes nothing in the ratio but keeps exp finite.
    sim = sim - sim.masked_fill(self_mask, float("-inf")).amax(dim=1, keepdim=True).detach()
    log_prob = sim - torch.logsumexp(sim.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)
    positives = (target[:, None] == target[None, :]) & ~self_mask
    n_pos = positives.sum(dim=1)
    anchors = n_pos > 0
    if not anchors.any():
        return features.sum() * 0.0
    mean_log_prob = (log_prob * positives).sum(dim=1)[anchors] / n_pos[anchors]
    return -mean_log_prob.mean()


def mixup_batch(x: torch.Tensor, lam: float, perm: torch.Tensor) -> torch.Tensor:
    """Mixup's input blend (Zhang et al., ICLR 2018): ``lam * x + (1 - lam) * x[perm]``."""
    return lam * x + (1.0 - lam) * x[perm]


class _Views(torch.utils.data.Dataset):
    """One epoch's augmented views: row ``i`` is image ``order[i]`` with seed ``seeds[i]``."""

    def __init__(self, images: Sequence[Image.Image], order: np.ndarray, seeds: np.ndarray, augment: ShelfAugment):
        self.images, self.order, self.seeds, self.augment = images, order, seeds, augment

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int):
        img = self.images[int(self.order[i])]
        view = self.augment(img, np.random.default_rng(int(self.seeds[i])))
        return torch.from_numpy(view), int(self.order[i])


def _central_region(img: Image.Image, region: float) -> Image.Image:
    """The centred square of ``region`` of the shorter side (all that augmentation reads)."""
    side = region * min(img.size)
    left, top = (img.width - side) / 2, (img.height - side) / 2
    box = tuple(round(v) for v in (left, top, left + side, top + side))
    img = img.crop(box)
    img.load()
    return img


def state_digest(module: nn.Module) -> str:
    """sha256 over a module's state dict (names, shapes, dtypes and values)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def finetune_key(base_identity: str, config: FinetuneConfig, image_digests: Sequence[str], labels: Sequence[str],
                 weights: Sequence[float], *, probe: dict | None = None) -> str:
    """Cache key of a fine-tuning run: base weights, settings and the exact training set.

    The images count in their order (the sampler draws row indices, so another order
    trains other weights); ``probe`` holds the settings of the head that starts the
    classifier, when one does.
    """
    h = hashlib.sha256()
    settings = {k: v for k, v in config.to_dict().items() if k not in ("device", "workers")}
    if config.loss != "supcon":
        # Settings that only the contrastive loss reads: keeps keys of other runs stable.
        for name in ("supcon_weight", "supcon_temperature", "views_per_class"):
            settings.pop(name)
    for name in ("mixup_alpha", "random_erase"):
        if not settings[name]:
            # Off: keys of runs from before the setting existed stay valid.
            settings.pop(name)
    head = {"base": base_identity, "config": settings, "torch": torch.__version__, "order": "as given"}
    if probe is not None:
        head["probe"] = probe
    h.update(json.dumps(head, sort_keys=True).encode())
    for digest, label, w in zip(image_digests, labels, weights, strict=True):
        h.update(f"{digest}:{label}:{w:g}\n".encode())
    return h.hexdigest()


def save_state(module: nn.Module, path: str | os.PathLike) -> None:
    """Write a state dict atomically."""
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(buf.getvalue())
    os.replace(tmp, path)


def finetune_backbone(
    net: EmbeddingNet,
    images: Sequence[Image.Image],
    labels: Sequence[str],
    *,
    config: FinetuneConfig,
    init_weight: np.ndarray | None = None,
    init_bias: np.ndarray | None = None,
    classes: Sequence[str] | None = None,
    sample_weight: Sequence[float] | None = None,
    progress: StepProgress | None = None,
) -> tuple[EmbeddingNet, FinetuneReport]:
    """Fine-tune ``net`` in place to classify ``images`` into ``labels``.

    Parameters
    ----------
    net : EmbeddingNet
        The backbone; it is trained in place and returned on the CPU in eval mode.
    images : sequence of PIL.Image.Image
        Decoded training images (store photos and reference pack shots).
    labels : sequence of str
    config : FinetuneConfig
    init_weight, init_bias : ndarray (k, d), (k,), optional
        Classifier start on L2-normalised features in the order of ``classes``, e.g.
        :class:`skuscale.head.LinearHead`'s ``coef_``/``intercept_`` fitted on the
        frozen embeddings (LP-FT). Default: class means of the frozen features.
    classes : sequence of str, optional
        Column order of ``init_weight`` (default: sorted unique labels).
    sample_weight : sequence of float, optional
        Weight of each image when drawing (e.g. ``reference_weight`` for pack shots).
    progress : callable, optional
        ``progress(step, total_steps, loss)`` after every optimiser step.

    Returns
    -------
    net : EmbeddingNet
    report : FinetuneReport
    """
    labels = np.asarray(labels, dtype=str)
    if len(images) != labels.size or labels.size == 0:
        raise ValueError(f"{len(images)} images for {labels.size} labels")
    classes = np.asarray(sorted(set(labels.tolist())) if classes is None else list(classes), dtype=str)
    if not np.isin(labels, classes).all():
        raise ValueError("every label must be one of classes")
    y = np.searchsorted(classes, labels) if (np.sort(classes) == classes).all() else np.array(
        [int(np.flatnonzero(classes == lab)[0]) for lab in labels]
    )
    weights = np.ones(labels.size) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    device = config.resolved_device()
    rng = np.random.default_rng(config.seed)
    # Its own stream, so that switching mixup on leaves the draws of images and views as they were.
    mix_rng = np.random.default_rng([config.seed, 1])
    torch.manual_seed(config.seed)
    size = int(config.image_size or net.spec.image_size)
    augment = ShelfAugment(image_size=size, region=1.0, erase=config.random_erase)
    regions = [_central_region(img.convert("RGB"), config.region) for img in images]
    cosine = config.loss == "cosface"

    if init_weight is None:
        with torch.inference_mode():
            net.eval()
            feats = []
            # The build's evaluation view, on images already cut to the central region.
            centre = Preprocessing(image_size=size, resize_shorter=round(size * config.region / CENTRE_CROP_FRACTION),
                                   mean=augment.mean, std=augment.std)
            for start in range(0, len(regions), 64):
                batch = np.stack([preprocess_image(r, centre) for r in regions[start:start + 64]])
                feats.append(F.normalize(net(torch.from_numpy(batch)), dim=1).numpy())
        feats = np.concatenate(feats)
        means = np.stack([feats[y == k].mean(0) for k in range(classes.size)])
        init_weight = means / np.linalg.norm(means, axis=1, keepdims=True) * 10.0
        init_bias = np.zeros(classes.size)
    w0 = torch.as_tensor(np.asarray(init_weight, dtype=np.float32))
    b0 = torch.as_tensor(np.zeros(classes.size, np.float32) if init_bias is None else np.asarray(init_bias, np.float32))
    if w0.shape != (classes.size, net.spec.dim) or b0.shape != (classes.size,):
        raise ValueError(f"init_weight must be ({classes.size}, {net.spec.dim}) and init_bias ({classes.size},)")
    model = _Classifier(net, w0, b0, cosine=cosine, dropout=config.dropout).to(device)
    model = model.to(memory_format=torch.channels_last)

    backbone_params = [p for p in model.backbone.parameters() if p.requires_grad]
    head_params = [model.weight] + ([] if cosine else [model.bias])
    optimiser = torch.optim.AdamW(
        [{"params": backbone_params, "lr": config.lr},
         {"params": head_params, "lr": config.lr * config.head_lr_multiplier}],
        weight_decay=config.weight_decay,
    )
    steps_per_epoch = config.steps_per_epoch(labels.size)
    total = steps_per_epoch * config.epochs
    warmup = config.warmup_epochs * steps_per_epoch

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress_share = (step - warmup) / max(1.0, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_share)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_factor)
    log_prior = torch.as_tensor(sampling_log_prior(y, weights, classes.size), dtype=torch.float32, device=device)
    workers = config.workers if config.workers is not None else (0 if device == "cpu" else min(8, os.cpu_count() or 1))
    use_amp = device == "cuda"

    report = FinetuneReport(device=device, epochs=config.epochs, steps=total, seconds=0.0, images=labels.size,
                            classes=int(classes.size))
    started = time.perf_counter()
    step = 0
    model.train()
    for _epoch in range(config.epochs):
        n_draw = steps_per_epoch * config.batch_size
        if config.loss == "supcon":
            order = grouped_balanced_indices(y, n_draw // config.views_per_class, config.views_per_class, rng,
                                             weights=weights)
        elif config.sampler == "balanced":
            order = balanced_indices(y, n_draw, rng, weights=weights)
        else:
            order = uniform_indices(labels.size, n_draw, rng, weights=weights)
        seeds = rng.integers(0, 2**63 - 1, size=n_draw)
        loader = torch.utils.data.DataLoader(
            _Views(regions, order, seeds, augment), batch_size=config.batch_size, shuffle=False,
            num_workers=workers, drop_last=True, pin_memory=device == "cuda",
            persistent_workers=False,
        )
        loss_sum, correct, seen = 0.0, 0, 0
        for x, idx in loader:
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            target = torch.as_tensor(y[idx.numpy()], device=device)
            if config.mixup_alpha:
                lam = float(mix_rng.beta(config.mixup_alpha, config.mixup_alpha))
                perm = torch.as_tensor(mix_rng.permutation(len(target)), device=device)
                x = mixup_batch(x, lam, perm)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
                logits, features = model(x)
                logits = logits.float()
            if cosine:
                m = F.one_hot(target, classes.size).float() * config.cosface_margin
                train_logits = config.cosface_scale * (logits - m)
            elif config.loss == "logit_adjust":
                train_logits = logits + log_prior
            else:
                train_logits = logits
            loss = F.cross_entropy(train_logits, target, label_smoothing=config.label_smoothing)
            if config.mixup_alpha:
                loss = lam * loss + (1.0 - lam) * F.cross_entropy(train_logits, target[perm],
                                                                  label_smoothing=config.label_smoothing)
            if config.loss == "supcon":
                loss = loss + config.supcon_weight * supcon_loss(features.float(), target,
                                                                 temperature=config.supcon_temperature)
            if not torch.isfinite(loss):
                raise SkuscaleError(f"fine-tuning diverged at step {step} (loss {loss.item()}); lower --finetune-lr")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            step += 1
            loss_sum += float(loss.detach()) * len(target)
            correct += int((logits.argmax(1) == target).sum())
            seen += len(target)
            if progress is not None:
                progress(step, total, loss_sum / seen)
        report.epoch_loss.append(loss_sum / max(seen, 1))
        report.epoch_train_top1.append(correct / max(seen, 1))
    report.seconds = time.perf_counter() - started
    net = model.backbone.to("cpu").to(memory_format=torch.contiguous_format).float().eval()
    for p in net.parameters():
        p.data = p.data.contiguous()
    return net, report
