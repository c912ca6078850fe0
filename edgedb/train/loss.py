"""The DB loss (Liao et al.): L = Ls + alpha * Lb + beta * Lt.

- Ls: binary cross-entropy of the probability map P against the shrink map, with hard
  negatives mined 3:1 (all positive pixels, the 3N hardest negative pixels);
- Lb: the approximate binary map B = 1 / (1 + exp(-k (P - T))), k = 50, against the same
  shrink map, by dice (default) or by the same mined BCE;
- Lt: L1 between the threshold map T and its label, inside the dilated text regions.

``mode="prob"`` trains P alone (Ls only): for exports without a threshold branch, when
the threshold head is not wanted.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgedb.errors import InvalidInputError

K = 50.0
ALPHA, BETA = 1.0, 10.0
NEGATIVE_RATIO = 3.0
BINARY_LOSSES = ("dice", "bce")
MODES = ("db", "prob")


def approximate_binary(prob, thresh, k: float = K):
    """B = 1 / (1 + e^(-k (P - T))): differentiable binarization."""
    import torch

    return torch.sigmoid(k * (prob - thresh))


def balanced_bce(pred, target, mask, negative_ratio: float = NEGATIVE_RATIO, eps: float = 1e-6):
    """BCE over all positive pixels and the ``negative_ratio`` x as many hardest negatives
    (within ``mask``), averaged over the pixels kept."""
    import torch
    import torch.nn.functional as F

    positive = (target * mask).flatten()
    negative = ((1 - target) * mask).flatten()
    positives = int(positive.sum().item())
    negatives = min(int(negative.sum().item()), int(positives * negative_ratio))
    if positives == 0:  # a crop without text: learn the background from a few hard pixels
        negatives = min(int(negative.sum().item()), 100)
    loss = F.binary_cross_entropy(pred.flatten().clamp(eps, 1 - eps), target.flatten(), reduction="none")
    positive_loss = (loss * positive).sum()
    negative_loss = loss * negative
    if negatives > 0:
        negative_loss = torch.topk(negative_loss, negatives).values.sum()
    else:
        negative_loss = negative_loss.sum() * 0
    return (positive_loss + negative_loss) / (positives + negatives + eps)


def dice_loss(pred, target, mask, eps: float = 1e-6):
    intersection = (pred * target * mask).sum()
    union = (pred * mask).sum() + (target * mask).sum() + eps
    return 1 - 2.0 * intersection / union


def masked_l1(pred, target, mask, eps: float = 1e-6):
    return ((pred - target).abs() * mask).sum() / (mask.sum() + eps)


@dataclass
class LossTerms:
    """The total and its parts (floats, for logging)."""

    total: float
    shrink: float
    binary: float = 0.0
    threshold: float = 0.0


def db_loss(prob, thresh, labels: dict, *, mode: str = "db", binary_loss: str = "dice",
            alpha: float = ALPHA, beta: float = BETA, k: float = K):
    """(loss tensor, LossTerms) for maps (N, 1, H, W) and label maps (N, H, W) under the
    keys ``shrink``, ``shrink_mask``, ``threshold``, ``threshold_mask``.

    ``thresh`` may be None in ``mode="prob"``.
    """
    if mode not in MODES:
        raise InvalidInputError(f"mode must be one of {MODES}, not {mode!r}")
    if binary_loss not in BINARY_LOSSES:
        raise InvalidInputError(f"binary_loss must be one of {BINARY_LOSSES}, not {binary_loss!r}")
    prob = prob[:, 0]
    shrink, shrink_mask = labels["shrink"], labels["shrink_mask"]
    loss_s = balanced_bce(prob, shrink, shrink_mask)
    if mode == "prob":
        value = float(loss_s.detach())
        return loss_s, LossTerms(value, value)
    if thresh is None:
        raise InvalidInputError("mode 'db' needs the threshold map; use mode='prob' without a threshold head")
    thresh = thresh[:, 0]
    binary = approximate_binary(prob, thresh, k)
    if binary_loss == "dice":
        loss_b = dice_loss(binary, shrink, shrink_mask)
    else:
        loss_b = balanced_bce(binary, shrink, shrink_mask)
    loss_t = masked_l1(thresh, labels["threshold"], labels["threshold_mask"])
    total = loss_s + alpha * loss_b + beta * loss_t
    return total, LossTerms(*(float(t.detach()) for t in (total, loss_s, loss_b, loss_t)))
