"""Deformable DETR transformer: encoder, query selection (two-stage / mixed) and decoder.

"Deformable-DETR" and "Deformable-DETR++" (H-DETR's baseline: two-stage, box refinement, mixed
query selection, look-forward-twice) are configurations of this one module.
"""
import math
from dataclasses import dataclass
from typing import List, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import MLP, box_sine_embedding
from .decoder import DecoderOutput, DeformableDecoder
from .encoder import DeformableEncoder


@dataclass
class EncoderState:
    memory: torch.Tensor  # (B, S, d)
    spatial_shapes: torch.Tensor  # (L, 2)
    level_start_index: torch.Tensor  # (L,)
    valid_ratios: torch.Tensor  # (B, L, 2) (w, h) fraction of each level that is not padding
    padding_mask: torch.Tensor  # (B, S) True on padding


class DeformableTransformer(nn.Module):
    def __init__(self, encoder: DeformableEncoder, decoder: DeformableDecoder, num_classes=80, num_feature_levels=4,
                 num_queries=300, two_stage=True, mixed_query_selection=False):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        d_model = decoder.d_model
        self.num_queries, self.two_stage, self.mixed_query_selection = num_queries, two_stage, mixed_query_selection
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model).normal_())
        if two_stage:
            self.enc_output = nn.Sequential(nn.Linear(d_model, d_model), nn.LayerNorm(d_model))
            self.enc_class_head = nn.Linear(d_model, num_classes)
            nn.init.constant_(self.enc_class_head.bias, -4.59511985)
            self.enc_box_head = MLP(d_model, d_model, 4, 3)
            nn.init.zeros_(self.enc_box_head.layers[-1].weight)
            nn.init.zeros_(self.enc_box_head.layers[-1].bias)
        if two_stage and not mixed_query_selection:
            # Plain two-stage Deformable DETR: content queries come from the selected proposals.
            self.proposal_content = nn.Sequential(nn.Linear(2 * d_model, d_model), nn.LayerNorm(d_model))
        else:
            self.query_content = nn.Embedding(num_queries, d_model)
        if not two_stage:
            # Learnable anchor boxes (as logits), spread over the image.
            self.anchor_boxes = nn.Embedding(num_queries, 4)
            nn.init.uniform_(self.anchor_boxes.weight[:, :2], -3.0, 3.0)
            nn.init.constant_(self.anchor_boxes.weight[:, 2:], -2.0)

    # --- encoder -------------------------------------------------------------------------------
    def encode(self, features: List[torch.Tensor], masks: List[torch.Tensor], pos_embeds: List[torch.Tensor]) -> EncoderState:
        src, pos, padding, shapes = [], [], [], []
        for level, (feature, mask, pe) in enumerate(zip(features, masks, pos_embeds)):
            shapes.append(feature.shape[-2:])
            src.append(feature.flatten(2).transpose(1, 2))
            pos.append(pe.flatten(2).transpose(1, 2) + self.level_embed[level])
            padding.append(mask.flatten(1))
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=src[0].device)
        level_start_index = torch.cat([spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]])
        valid_ratios = torch.stack([self.valid_ratio(m) for m in masks], 1)
        padding = torch.cat(padding, 1)
        memory = self.encoder(torch.cat(src, 1), torch.cat(pos, 1), spatial_shapes, level_start_index, valid_ratios, padding)
        return EncoderState(memory, spatial_shapes, level_start_index, valid_ratios, padding)

    @staticmethod
    def valid_ratio(mask):
        _, h, w = mask.shape
        valid_h = (~mask[:, :, 0]).sum(1).float() / h
        valid_w = (~mask[:, 0, :]).sum(1).float() / w
        return torch.stack([valid_w, valid_h], -1)

    # --- query selection -----------------------------------------------------------------------
    def encoder_proposals(self, state: EncoderState):
        """One proposal box per memory position (Deformable DETR Sec. A.4): the pixel centre with a
        size of 0.05 * 2^level, in logit space; positions on padding or near the border are invalid."""
        proposals, start = [], 0
        for level, (h, w) in enumerate(state.spatial_shapes.tolist()):
            mask = state.padding_mask[:, start : start + h * w].view(-1, h, w)
            valid_h = (~mask[:, :, 0]).sum(1, keepdim=True).float()
            valid_w = (~mask[:, 0, :]).sum(1, keepdim=True).float()
            ys, xs = torch.meshgrid(torch.arange(h, device=mask.device), torch.arange(w, device=mask.device), indexing="ij")
            cx = (xs.reshape(1, -1) + 0.5) / valid_w
            cy = (ys.reshape(1, -1) + 0.5) / valid_h
            size = torch.full_like(cx, 0.05 * 2.0**level)
            proposals.append(torch.stack([cx, cy, size, size], -1))
            start += h * w
        proposals = torch.cat(proposals, 1)
        valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True) & ~state.padding_mask[..., None]
        logits = torch.log(proposals / (1 - proposals)).masked_fill(~valid, math.inf)
        memory = state.memory.masked_fill(~valid, 0.0)
        return logits, memory, valid[..., 0]

    def select_queries(self, state: EncoderState):
        """Initial content queries (B, Q, d), reference boxes (B, Q, 4) and, for two-stage, the
        encoder's predictions for the selected proposals (for the encoder loss)."""
        batch = state.memory.shape[0]
        if not self.two_stage:
            reference = self.anchor_boxes.weight.sigmoid()[None].expand(batch, -1, -1)
            return self.query_content.weight[None].expand(batch, -1, -1), reference, None
        proposal_logits, memory, valid = self.encoder_proposals(state)
        if memory.shape[1] < self.num_queries:
            raise ValueError(f"two-stage selection needs at least num_queries={self.num_queries} encoder positions, "
                             f"got {memory.shape[1]}: use larger images or fewer queries")
        enc_out = self.enc_output(memory)
        enc_logits = self.enc_class_head(enc_out)
        enc_boxes = self.enc_box_head(enc_out) + proposal_logits
        scores = enc_logits.max(-1).values.masked_fill(~valid, -math.inf)
        topk = scores.topk(self.num_queries, dim=1).indices
        topk_logits = enc_logits.gather(1, topk[..., None].expand(-1, -1, enc_logits.shape[-1]))
        topk_boxes = enc_boxes.gather(1, topk[..., None].expand(-1, -1, 4)).sigmoid()
        reference = topk_boxes.detach()
        if self.mixed_query_selection:
            content = self.query_content.weight[None].expand(batch, -1, -1)
        else:
            content = self.proposal_content(box_sine_embedding(reference, self.decoder.d_model // 2))
        return content, reference, {"logits": topk_logits, "boxes": topk_boxes}

    # --- decoder -------------------------------------------------------------------------------
    def decode(self, content, reference_boxes, state: EncoderState, self_attn_mask=None, routes: Optional[Mapping] = None) -> DecoderOutput:
        """Decode any given queries (e.g. an EMA teacher's, or several groups with a mask)."""
        return self.decoder(content, reference_boxes, state.memory, state.spatial_shapes, state.level_start_index,
                            state.valid_ratios, state.padding_mask, self_attn_mask, routes)

    def forward(self, features, masks, pos_embeds, routes: Optional[Mapping] = None):
        state = self.encode(features, masks, pos_embeds)
        content, reference, enc_predictions = self.select_queries(state)
        return self.decode(content, reference, state, routes=routes), enc_predictions, state
