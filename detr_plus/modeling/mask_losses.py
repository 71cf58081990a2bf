"""Point-sampled mask losses (PointRend's uncertainty sampling, arXiv 1912.08193 Sec. 3.1; the
training loss of Mask2Former, arXiv 2112.01527 Sec. 3.3, which Mr. DETR's mask head uses): the loss
of a mask is computed at ``num_points`` points instead of every pixel, most of them where the
prediction is least certain."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F


def point_sample(maps: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(N, P) values of ``maps`` (N, H, W) at ``points`` (N, P, 2), (x, y) in [0, 1] of the map's extent
    (pixel centres at (i + 0.5) / size), bilinear, zero outside."""
    return F.grid_sample(maps[:, None], 2.0 * points[:, :, None] - 1.0, align_corners=False)[:, 0, :, 0]


def uncertain_points(logits: torch.Tensor, num_points: int, oversample_ratio: float, importance_ratio: float,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(N, num_points, 2) points for the masks ``logits`` (N, H, W): of ``oversample_ratio * num_points``
    uniform random points, the ``importance_ratio * num_points`` with the logit nearest 0 (uncertainty
    -|logit|), then uniform random points for the rest."""
    n = logits.shape[0]
    candidates = torch.rand(n, int(num_points * oversample_ratio), 2, device=logits.device, generator=generator)
    uncertainty = -point_sample(logits, candidates).abs()
    num_uncertain = int(importance_ratio * num_points)
    chosen = uncertainty.topk(num_uncertain, dim=1).indices
    uncertain = candidates.gather(1, chosen[..., None].expand(-1, -1, 2))
    rest = torch.rand(n, num_points - num_uncertain, 2, device=logits.device, generator=generator)
    return torch.cat([uncertain, rest], 1)


def point_mask_losses(logits: torch.Tensor, target_masks: torch.Tensor, num_points: int, oversample_ratio: float = 3.0,
                      importance_ratio: float = 0.75, generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(BCE, dice), each summed over the N masks (the caller divides by the number of objects):
    ``logits`` (N, h, w) predicted at a coarse stride, ``target_masks`` (N, H, W) {0, 1} of the same
    extent; both sampled at the same ``uncertain_points`` of the (detached) logits.
    BCE of a mask = mean over its points of the sigmoid cross-entropy; dice of a mask =
    1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1), p = sigmoid at the points."""
    if logits.shape[0] == 0:  # no pair matched: zero losses that still reach the head's parameters
        zero = logits.sum() * 0.0
        return zero, zero
    with torch.no_grad():
        points = uncertain_points(logits.detach(), num_points, oversample_ratio, importance_ratio, generator)
        targets = point_sample(target_masks.to(logits.dtype), points)
    predicted = point_sample(logits, points)
    bce = F.binary_cross_entropy_with_logits(predicted, targets, reduction="none").mean(1).sum()
    probabilities = predicted.sigmoid()
    dice = 1 - (2 * (probabilities * targets).sum(1) + 1) / (probabilities.sum(1) + targets.sum(1) + 1)
    return bce, dice.sum()
