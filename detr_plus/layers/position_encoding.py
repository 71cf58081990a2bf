"""Sine position encodings (DETR, Carion et al. 2020, Sec. A.4; Deformable DETR's normalized variant)."""
import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """2D sine encoding of pixel positions of a padded feature map, (B, H, W) mask -> (B, 2*num_pos_feats, H, W).

    Positions are cumulative counts over valid (unpadded) pixels, normalized to [0, scale], with
    the -0.5 offset Deformable DETR uses so a pixel is encoded by its centre.
    """

    def __init__(self, num_pos_feats=128, temperature=10000, scale=2 * math.pi, offset=-0.5, eps=1e-6):
        super().__init__()
        self.num_pos_feats, self.temperature, self.scale, self.offset, self.eps = num_pos_feats, temperature, scale, offset, eps

    def forward(self, mask):
        not_mask = (~mask).to(torch.float32)
        y = not_mask.cumsum(1)
        x = not_mask.cumsum(2)
        y = (y + self.offset) / (y[:, -1:, :] + self.eps) * self.scale
        x = (x + self.offset) / (x[:, :, -1:] + self.eps) * self.scale
        pos = torch.cat([sine_features(y, self.num_pos_feats, self.temperature), sine_features(x, self.num_pos_feats, self.temperature)], -1)
        return pos.permute(0, 3, 1, 2)


def sine_features(coordinate, num_feats, temperature=10000):
    """(...,) -> (..., num_feats): interleaved sin/cos of coordinate / temperature^(2i/num_feats)."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=coordinate.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    angles = coordinate[..., None] / dim_t
    return torch.stack([angles[..., 0::2].sin(), angles[..., 1::2].cos()], -1).flatten(-2)


def box_sine_embedding(boxes, num_feats=128, temperature=10000, scale=2 * math.pi):
    """Normalized (cx, cy, w, h) boxes (..., 4) -> (..., 4*num_feats) in the order (y, x, w, h), as DAB/DINO."""
    cx, cy, w, h = (boxes[..., i] * scale for i in range(4))
    return torch.cat([sine_features(c, num_feats, temperature) for c in (cy, cx, w, h)], -1)
