"""Instance masks as a per-query head of the core's ``heads`` slot (``contracts.Head``).

The head of Mr. DETR's segmentation results (Mr. DETR, arXiv 2412.10028, instance segmentation on
Deformable-DETR++), which is DETR's panoptic mask head (DETR, arXiv 2005.12872, Sec. 4.4 and Fig. 8)
moved onto a multi-scale encoder:

* each query of the last decoder layer attends over the encoder memory of the coarsest level
  (stride 64): one attention map per head, a softmax over heads x positions together, padding
  masked (``QueryAttentionMaps``);
* the maps, concatenated with that memory, go through 3x3 conv + GroupNorm(8) + ReLU stages
  (d + heads -> d / 2 -> d / 4 -> d / 8 -> d / 16 channels) that add, with nearest upsampling,
  the backbone's res5 / res4 / res3 features, each brought one stride down by a 3x3 stride-2 conv
  (to half its channels) and to the stage's width by a 1x1 adapter (``MaskDecoder``); a last 3x3
  conv gives one mask logit map per query at stride 16 of the padded input.

The loss (``MaskHead.loss``) is point-sampled: sigmoid BCE (weight 5) and dice (weight 2) at points
chosen by uncertainty (``mask_losses.uncertain_points``), summed over the matched pairs and divided by the
number of objects. At inference the kept queries' logit maps are upsampled to the padded input,
cropped to the image, resized to the original size and thresholded at 0 (``finish``).
"""
import math
from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.level_shapes import level_sizes
from .contracts import EncoderState, Indices, LayerPredictions, Targets
from .criterion import SetCriterion
from .mask_losses import point_mask_losses


class QueryAttentionMaps(nn.Module):
    """(B, Q, heads, h, w) attention weights of each query over a feature map: per head the scaled dot
    product of the projected query and the projected features, a softmax over heads x h x w jointly
    (DETR's ``MHAttentionMap``), padded positions at zero weight."""

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.query_proj, self.key_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        for proj in (self.query_proj, self.key_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, queries: torch.Tensor, features: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        B, Q, d = queries.shape
        h, w = features.shape[-2:]
        head_dim = d // self.num_heads
        q = self.query_proj(queries).view(B, Q, self.num_heads, head_dim) / math.sqrt(head_dim)
        k = F.conv2d(features, self.key_proj.weight[..., None, None], self.key_proj.bias).view(B, self.num_heads, head_dim, h, w)
        logits = torch.einsum("bqnc,bnchw->bqnhw", q, k).masked_fill(padding[:, None, None], float("-inf"))
        return self.dropout(logits.flatten(2).softmax(-1).view(B, Q, self.num_heads, h, w))


def _conv_norm(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.GroupNorm(8, out_channels), nn.ReLU())


class MaskDecoder(nn.Module):
    """(B * Q, d + heads, h, w) at the memory's stride S -> (B * Q, 1, H / (S / 4), W / (S / 4)) mask logits
    (module docstring). ``feature_channels``: channels of res5, res4, res3 (coarsest first).
    ``downsample_features``: each feature goes through a stride-2 3x3 conv to half its channels
    first (Mr. DETR's head: memory at stride 64, logits at 16); without, the features are added at their
    own strides (DETR's layout: memory at stride 32, logits at 8)."""

    def __init__(self, d_model: int, num_heads: int, feature_channels: Sequence[int], downsample_features: bool = True):
        super().__init__()
        widths = [d_model + num_heads, d_model // 2, d_model // 4, d_model // 8, d_model // 16]
        self.stem = nn.Sequential(_conv_norm(widths[0], widths[0]), _conv_norm(widths[0], widths[1]))
        if downsample_features:
            self.downsample = nn.ModuleList(nn.Conv2d(c, c // 2, 3, stride=2, padding=1) for c in feature_channels)
            feature_channels = [c // 2 for c in feature_channels]
        else:
            self.downsample = nn.ModuleList(nn.Identity() for _ in feature_channels)
        self.adapters = nn.ModuleList(nn.Conv2d(c, width, 1) for c, width in zip(feature_channels, widths[1:4]))
        self.stages = nn.ModuleList(_conv_norm(widths[i], widths[i + 1]) for i in range(1, 4))
        self.output = nn.Conv2d(widths[4], 1, 3, padding=1)
        for module in self.modules():  # DETR's init of its mask head
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=1)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor, features: Sequence[torch.Tensor], image_index: torch.Tensor) -> torch.Tensor:
        """``image_index`` (N,): the image of each of the N masks in ``x``; the features are adapted once
        per image and then taken for each mask."""
        x = self.stem(x)
        for down, adapter, stage, feature in zip(self.downsample, self.adapters, self.stages, features):
            skip = adapter(down(feature))[image_index]
            x = stage(skip + F.interpolate(x, size=skip.shape[-2:], mode="nearest"))
        return self.output(x)


class MaskHead(nn.Module):
    """Mask logits of the queries of the last decoder layer (``layers = "last"``; Mr. DETR supervises
    the last layer of each route), at stride 16: (B, Q, H / 16, W / 16) for every query (``forward``);
    inference decodes the kept queries' only (``select``), training the matched queries' (``matched_loss``). ``feature_channels``: the
    backbone outputs it reads, coarsest first, with their channels; ``num_points``: points per mask of
    the loss (12544 = 112^2 on COCO), ``oversample_ratio`` / ``importance_ratio`` of the uncertainty
    sampling. ``memory_level``: the encoder level the queries attend to (-1: the coarsest, stride 64,
    as Mr. DETR); with ``downsample_features=False`` the features join at their own strides, for a
    memory at stride 32 (``MaskDecoder``; the 128 px shapes images, whose stride-64 level is 2 x 2)."""

    layers = "last"
    field = "pred_mask_logits"  # replaced by "pred_masks" in ``finish``

    def __init__(self, d_model: int, feature_channels: Dict[str, int], num_heads: int = 8, num_points: int = 12544,
                 oversample_ratio: float = 3.0, importance_ratio: float = 0.75, mask_weight: float = 5.0, dice_weight: float = 2.0,
                 memory_level: int = -1, downsample_features: bool = True):
        super().__init__()
        self.feature_names, self.memory_level = list(feature_channels), memory_level
        self.attention = QueryAttentionMaps(d_model, num_heads)
        self.decoder = MaskDecoder(d_model, num_heads, list(feature_channels.values()), downsample_features)
        self.num_points, self.oversample_ratio, self.importance_ratio = num_points, oversample_ratio, importance_ratio
        self.mask_weight, self.dice_weight = mask_weight, dice_weight

    def forward(self, predictions: LayerPredictions, state: EncoderState) -> torch.Tensor:
        """(B, Q, h, w) mask logits of every query (inference: the kept queries' become masks)."""
        B, Q = predictions.hidden.shape[:2]
        image = torch.arange(B, device=predictions.hidden.device).repeat_interleave(Q)
        logits = self.mask_logits(predictions.hidden.flatten(0, 1), image, state)
        return logits.view(B, Q, *logits.shape[-2:])

    def mask_logits(self, queries: torch.Tensor, image: torch.Tensor, state: EncoderState) -> torch.Tensor:
        """(N, h, w) mask logits of N query states (N, d), query n of image ``image[n]``."""
        memory, padding = memory_level(state, self.memory_level)
        maps = self.attention(queries[:, None], memory[image], padding[image])[:, 0]
        x = torch.cat([memory[image], maps], 1)
        features = [state.backbone_features[name] for name in self.feature_names]
        return self.decoder(x, features, image)[:, 0]

    def select(self, predictions: LayerPredictions, state: EncoderState, image: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """(N, h, w) mask logits of queries ``query`` of images ``image`` (inference: the kept queries only)."""
        return self.mask_logits(predictions.hidden[image, query], image, state)

    def matched_loss(self, predictions: LayerPredictions, state: EncoderState, targets: Targets, indices: Indices,
                     num_boxes) -> Dict[str, torch.Tensor]:
        """``loss`` computed from the matched queries' masks only (what the loss book calls in training):
        the same values as ``loss(self(predictions, state), ...)`` without decoding a mask for every
        query (a one-to-many route matches a few of its queries, a one-to-one one fewer still)."""
        image, query, _, _ = SetCriterion.pairs(indices, targets)
        return self.weighted_losses(self.select(predictions, state, image, query), targets, indices, num_boxes)

    def loss(self, outputs: torch.Tensor, predictions: LayerPredictions, targets: Targets, indices: Indices,
             num_boxes) -> Dict[str, torch.Tensor]:
        """Point-sampled BCE and dice of the matched pairs (``mask_losses.point_mask_losses``), weighted."""
        image, query, _, _ = SetCriterion.pairs(indices, targets)
        return self.weighted_losses(outputs[image, query], targets, indices, num_boxes)

    def weighted_losses(self, logits: torch.Tensor, targets: Targets, indices: Indices, num_boxes) -> Dict[str, torch.Tensor]:
        """{"loss_mask", "loss_dice"} of the matched pairs' logits (N, h, w), in ``indices`` order."""
        if any("masks" not in t for t in targets):
            raise KeyError("the mask head needs targets with 'masks': the data mapper must keep them "
                           "(dataloader.train.mapper.mask_format='bitmask', see configs/common/masks.py)")
        gt = torch.cat([t["masks"][g] for t, (_, g) in zip(targets, indices)])
        bce, dice = point_mask_losses(logits, gt, self.num_points, self.oversample_ratio, self.importance_ratio)
        return {"loss_mask": self.mask_weight * bce / num_boxes, "loss_dice": self.dice_weight * dice / num_boxes}

    @staticmethod
    def finish(instances, image_size, padded_size):
        """``pred_mask_logits`` (K, H / 16, W / 16) of the padded input -> ``pred_masks`` (K, height, width)
        bool of the output image: upsampled to the padded input, cropped to the image (``image_size``),
        resized to the instances' size, thresholded at logit 0."""
        logits = instances.get("pred_mask_logits")
        instances.remove("pred_mask_logits")
        h, w = image_size
        full = F.interpolate(logits[:, None].float(), size=tuple(padded_size), mode="bilinear", align_corners=False)[:, :, :h, :w]
        full = F.interpolate(full, size=instances.image_size, mode="bilinear", align_corners=False)
        instances.pred_masks = full[:, 0] > 0
        return instances


def memory_level(state: EncoderState, level: int):
    """(memory (B, d, h, w), padding (B, h, w)) of the encoder's level ``level`` (-1: the coarsest)."""
    sizes = level_sizes(state.spatial_shapes)
    level = level % len(sizes)
    start = sum(h * w for h, w in sizes[:level])
    h, w = sizes[level]
    memory = state.memory[:, start : start + h * w]
    return memory.transpose(1, 2).reshape(memory.shape[0], -1, h, w), state.padding_mask[:, start : start + h * w].view(-1, h, w)
