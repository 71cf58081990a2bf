"""Deformable DETR transformer: encoder, query selection and decoder.

The Deformable-DETR variants the papers compare against are configurations of this one module
(``query_init`` and the decoder's switches; README "Baselines"):

* "embedding": published single-stage Deformable DETR (Zhu et al. Sec. 4.1): a learned query
  embedding split into a static positional part and the content query, 2-d reference points from a
  linear layer of the positional part;
* "anchors": learned content queries and learned 4-d anchor boxes, positions from the boxes at
  every layer (DAB-Deformable-DETR);
* "proposals": published two-stage Deformable DETR (Sec. A.4): the top-k encoder proposals give the
  reference boxes, and a linear layer of their sine embedding the positional part and the content;
* "mixed": mixed query selection (DINO Sec. 3.3): reference boxes (and positional part) from the
  top-k proposals, learned content queries (H-DETR's Deformable-DETR++).

The decoder's ``query_position`` says where positions come from: "static" (the query generation's
positional part, fixed through the decoder, as published) or "box_sine" (recomputed from each
layer's boxes, DAB / DINO). "embedding" needs "static", "anchors" needs "box_sine"; the two-stage
inits take either.
"""
import math
from typing import List, Mapping, Optional, Tuple

import torch
from torch import nn

from ..layers import MLP, box_sine_embedding
from ..layers.level_shapes import level_shapes_tensor, level_sizes
from .contracts import DecoderOutput, DecoderQueries, EncoderState, QueryGroup, QuerySelection
from .decoder import DeformableDecoder
from .encoder import DeformableEncoder
from .heads import init_detection_heads, xavier_matrices

QUERY_INITS = ("embedding", "anchors", "proposals", "mixed")
POSITION_OF_INIT = {"embedding": "static", "anchors": "box_sine"}
TWO_STAGE_INITS = ("proposals", "mixed")
ENC_LOSS_TOKENS = ("topk", "all")


class DeformableTransformer(nn.Module):
    """``enc_class_agnostic``: the encoder's proposal score is its first logit, trained with binary
    targets (every GT labelled 0: the published two-stage and H-DETR), and the top-k are selected
    by it; otherwise the largest of the C class scores, trained with the GT's classes (DINO);
    ``enc_class_head_outputs``: the proposal head's width, default 1 when class-agnostic, else the
    class count (the official two-stage code keeps a C-wide head with binary targets: its other C - 1
    logits only ever see negatives);
    ``enc_loss_tokens``: the encoder loss covers the "topk" selected proposals (DINO) or "all"
    encoder tokens (the published two-stage); ``xavier_init``: the published initialisation
    (Xavier-uniform for every matrix of the encoder, decoder layers and query generation, then the
    own init of every module that sets ``keeps_own_init``: the deformable attention's, QR-DETR's
    routers); ``query_content_init``: the learned content queries (query_init "anchors" / "mixed")
    keep ``nn.Embedding``'s N(0, 1) ("normal") or join the Xavier pass ("xavier": DINO's code, whose
    transformer re-initialises every matrix it holds, its content embedding included);
    ``query_content``: "learned" content queries for query_init "embedding" / "anchors", or "zeros"
    (Conditional DETR, DAB-DETR: the content starts at zero; "embedding" then learns the positional
    part only); ``reference_head_layers``: the layers of the MLP that gives "embedding" its 2-d
    reference points (1: Deformable DETR's linear layer; 2: Conditional DETR's MLP);
    ``anchor_init``: the learned anchors of "anchors", as logits: "spread" over the image
    (x, y ~ U(-3, 3), w = h = -2) or "normal" (N(0, 1), DAB-DETR); ``level_embedding``: a learned
    vector per feature level added to the position embedding (multi-scale; off for one level)."""

    def __init__(self, encoder: DeformableEncoder, decoder: DeformableDecoder, num_classes=80, num_feature_levels=4,
                 num_queries=300, query_init="mixed", enc_class_agnostic=False, enc_loss_tokens="topk", xavier_init=True,
                 enc_class_head_outputs: Optional[int] = None, query_content_init: str = "normal",
                 query_content: str = "learned", reference_head_layers: int = 1, anchor_init: str = "spread",
                 level_embedding: bool = True):
        super().__init__()
        if query_content not in ("learned", "zeros") or anchor_init not in ("spread", "normal"):
            raise ValueError(f"transformer.query_content={query_content!r} (learned | zeros), anchor_init={anchor_init!r} (spread | normal)")
        self.anchor_init = anchor_init
        if query_content_init not in ("normal", "xavier"):
            raise ValueError(f"transformer.query_content_init={query_content_init!r}: expected 'normal' or 'xavier'")
        self.query_content_init = query_content_init
        if query_init not in QUERY_INITS:
            raise ValueError(f"transformer.query_init={query_init!r}: expected one of {QUERY_INITS}")
        if enc_loss_tokens not in ENC_LOSS_TOKENS:
            raise ValueError(f"transformer.enc_loss_tokens={enc_loss_tokens!r}: expected one of {ENC_LOSS_TOKENS}")
        wanted = POSITION_OF_INIT.get(query_init)
        if wanted is not None and decoder.query_position != wanted:
            raise ValueError(f"transformer.query_init={query_init!r} needs decoder.query_position={wanted!r}, "
                             f"got {decoder.query_position!r}")
        self.encoder, self.decoder = encoder, decoder
        d_model = decoder.d_model
        self.num_queries, self.query_init = num_queries, query_init
        self.enc_class_agnostic, self.enc_loss_tokens = enc_class_agnostic, enc_loss_tokens
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model)) if level_embedding else None
        if self.two_stage:
            self.enc_output = nn.Sequential(nn.Linear(d_model, d_model), nn.LayerNorm(d_model))
            outputs = enc_class_head_outputs or (1 if enc_class_agnostic else num_classes)
            self.enc_class_head = nn.Linear(d_model, outputs)
            self.enc_box_head = MLP(d_model, d_model, 4, 3)
        self.static_position = decoder.query_position == "static"
        learned_content = query_content == "learned"
        if query_init == "embedding":
            self.query_embedding = nn.Embedding(num_queries, (2 if learned_content else 1) * d_model)  # [position | content]
            self.reference_points = nn.Linear(d_model, 2) if reference_head_layers == 1 else MLP(d_model, d_model, 2, reference_head_layers)
        if query_init == "proposals" or (query_init == "mixed" and self.static_position):
            # [position | content] from the proposals' sine embedding (Deformable DETR's pos_trans).
            self.proposal_embedding = nn.Sequential(nn.Linear(2 * d_model, 2 * d_model), nn.LayerNorm(2 * d_model))
        if query_init == "mixed" or (query_init == "anchors" and learned_content):
            self.query_content = nn.Embedding(num_queries, d_model)
        if query_init == "anchors":
            self.anchor_boxes = nn.Embedding(num_queries, 4)  # as logits
        self.reset_parameters(xavier_init)

    @property
    def two_stage(self) -> bool:
        return self.query_init in TWO_STAGE_INITS

    @torch.no_grad()
    def reset_parameters(self, xavier_init=True):
        if xavier_init:
            generators = [self.encoder, self.decoder.layers, getattr(self.decoder, "ref_point_head", None),
                          getattr(self.decoder, "spatial_query", None),  # Conditional / DAB-DETR's lambda and w/h MLPs
                          getattr(self, "enc_output", None), getattr(self, "proposal_embedding", None),
                          getattr(self, "reference_points", None)]
            if self.query_content_init == "xavier":
                generators.append(getattr(self, "query_content", None))
            xavier_matrices(*filter(None, generators))
            for module in self.modules():  # modules with an init of their own (the deformable attention's, ...)
                if getattr(module, "keeps_own_init", False):
                    module.reset_parameters()
        if self.level_embed is not None:
            nn.init.normal_(self.level_embed)
        if self.two_stage:
            init_detection_heads(self.enc_class_head, self.enc_box_head)
        if self.query_init == "embedding" and isinstance(self.reference_points, nn.Linear):
            nn.init.constant_(self.reference_points.bias, 0.0)
        if self.query_init == "anchors" and self.anchor_init == "spread":  # spread over the image
            nn.init.uniform_(self.anchor_boxes.weight[:, :2], -3.0, 3.0)
            nn.init.constant_(self.anchor_boxes.weight[:, 2:], -2.0)
        elif self.query_init == "anchors":
            nn.init.normal_(self.anchor_boxes.weight)

    # --- encoder -------------------------------------------------------------------------------
    def encode(self, features: List[torch.Tensor], masks: List[torch.Tensor], pos_embeds: List[torch.Tensor]) -> EncoderState:
        src, pos, padding, shapes = [], [], [], []
        for level, (feature, mask, pe) in enumerate(zip(features, masks, pos_embeds)):
            shapes.append(tuple(feature.shape[-2:]))
            src.append(feature.flatten(2).transpose(1, 2))
            pos.append(pe.flatten(2).transpose(1, 2) + (0 if self.level_embed is None else self.level_embed[level]))
            padding.append(mask.flatten(1))
        spatial_shapes = level_shapes_tensor(shapes, src[0].device)
        level_start_index = torch.cat([spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]])
        valid_ratios = torch.stack([self.valid_ratio(m) for m in masks], 1)
        padding = torch.cat(padding, 1)
        memory = self.encoder(torch.cat(src, 1), torch.cat(pos, 1), spatial_shapes, level_start_index, valid_ratios, padding)
        return EncoderState(memory, spatial_shapes, level_start_index, valid_ratios, padding, memory_pos=torch.cat(pos, 1))

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
        for level, (h, w) in enumerate(level_sizes(state.spatial_shapes)):
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

    def select_queries(self, state: EncoderState, heads: Optional[Tuple[nn.Module, nn.Module]] = None,
                       indices: Optional[torch.Tensor] = None, num_queries: Optional[int] = None,
                       content: Optional[torch.Tensor] = None) -> QuerySelection:
        """The primary queries (``query_init``) and, for two-stage, the encoder predictions its loss reads.

        ``heads``: (class head, box head) to score and regress the encoder tokens with instead of the
        transformer's own (two-stage only): another top-k selection from the same encoder output,
        with the same learned content queries (Mr. DETR's Route-3, ``VariantQuerySelection``).
        ``indices`` (B, num_queries): the encoder tokens to select instead of the top-k of the scores
        (two-stage only; an EMA teacher's selection, ``DeformableDETR.select_teacher_proposals``).
        ``num_queries``: the top-k count instead of the model's, with ``content`` (k, d) the learned
        content queries of mixed selection for all k (two-stage only; H-DETR's hybrid branch selects
        the top-(primary + one-to-many) proposals, the primary queries being the first ones)."""
        batch = state.memory.shape[0]
        d_model = self.decoder.d_model
        if indices is not None and self.query_init in ("embedding", "anchors"):
            raise ValueError(f"query_init={self.query_init!r} selects no encoder tokens: indices are for two-stage models")
        if (num_queries is not None or content is not None) and not self.two_stage:
            raise ValueError(f"query_init={self.query_init!r} selects no encoder tokens: num_queries / content are for two-stage models")
        if self.query_init == "embedding":
            position, content = self.query_embedding.weight[:, :d_model], self.query_embedding.weight[:, d_model:]
            reference = self.reference_points(position).sigmoid()
            content = content if content.shape[1] else torch.zeros_like(position)
            return QuerySelection(DecoderQueries(*(x[None].expand(batch, -1, -1) for x in (content, reference, position))))
        if self.query_init == "anchors":
            reference = self.anchor_boxes.weight.sigmoid()[None].expand(batch, -1, -1)
            content = self.query_content.weight if hasattr(self, "query_content") else reference.new_zeros(reference.shape[1], d_model)
            return QuerySelection(DecoderQueries(content[None].expand(batch, -1, -1), reference))
        num_queries = self.num_queries if num_queries is None else num_queries
        learned_content = self.query_content.weight if content is None and self.query_init == "mixed" else content
        proposal_logits, memory, valid = self.encoder_proposals(state)
        if memory.shape[1] < num_queries:
            raise ValueError(f"two-stage selection needs at least num_queries={num_queries} encoder positions, "
                             f"got {memory.shape[1]}: use larger images or fewer queries")
        class_head, box_head = heads or (self.enc_class_head, self.enc_box_head)
        enc_out = self.enc_output(memory)
        enc_logits = class_head(enc_out)
        enc_boxes = box_head(enc_out) + proposal_logits
        scores = (enc_logits[..., 0] if self.enc_class_agnostic else enc_logits.max(-1).values).masked_fill(~valid, -math.inf)
        topk = scores.topk(num_queries, dim=1).indices if indices is None else indices
        topk_logits = enc_logits.gather(1, topk[..., None].expand(-1, -1, enc_logits.shape[-1]))
        topk_boxes = enc_boxes.gather(1, topk[..., None].expand(-1, -1, 4)).sigmoid()
        reference = topk_boxes.detach()
        position = content = None
        if hasattr(self, "proposal_embedding"):
            position, content = self.proposal_embedding(box_sine_embedding(reference, d_model // 2)).split(d_model, -1)
        if self.query_init == "mixed":
            content = learned_content[None].expand(batch, -1, -1)
        queries = DecoderQueries(content, reference, position if self.static_position else None)
        # "anchors": the proposal boxes the predictions start from (an encoder loss may match on them).
        if self.enc_loss_tokens == "topk":
            topk_anchors = proposal_logits.gather(1, topk[..., None].expand(-1, -1, 4)).sigmoid()
            predictions = {"logits": topk_logits, "boxes": topk_boxes, "anchors": topk_anchors}
        else:
            predictions = {"logits": enc_logits, "boxes": enc_boxes.sigmoid(), "valid": valid,
                           "anchors": proposal_logits.sigmoid()}
        return QuerySelection(queries, predictions, topk)

    def queries_at(self, content: torch.Tensor, boxes: torch.Tensor, slots: Optional[torch.Tensor] = None) -> DecoderQueries:
        """Queries with the given content (B, N, d) at the given 4-d boxes (B, N, 4), with positions the
        way this model gives its own queries positions: from the boxes (box_sine decoders, or the
        proposal embedding's positional part in two-stage static models); the published single-stage
        model has no positional encoding of a box, only a query slot's static position, so there the
        query takes the positional part of query ``slots`` (B, N) and keeps the whole box as its
        anchor: the deformable sampling and the first refinement start from the box, w and h
        included (OD-DETR's auxiliary groups, Sec. 3.4: a teacher's updated queries and boxes become
        "independent initial queries and anchors for PE"). Such queries are decoded apart from the
        primary queries' 2-d points (``DeformableDecoder.forward``)."""
        if self.query_init == "embedding":
            if slots is None:
                raise ValueError("the single-stage model's positions belong to query slots: give queries_at(..., slots=...)")
            position = self.query_embedding.weight[:, : self.decoder.d_model][slots]
            return DecoderQueries(content, boxes, position)
        if not self.static_position:
            return DecoderQueries(content, boxes)
        position, _ = self.proposal_embedding(box_sine_embedding(boxes, self.decoder.d_model // 2)).split(self.decoder.d_model, -1)
        return DecoderQueries(content, boxes, position)

    # --- decoder -------------------------------------------------------------------------------
    def decode(self, queries: DecoderQueries, state: EncoderState, variants: Optional[Mapping] = None,
               groups: Optional[Mapping[str, QueryGroup]] = None, variant_queries: Optional[Mapping[str, DecoderQueries]] = None) -> DecoderOutput:
        """Decode any given queries (the selected ones, an EMA teacher's, several query groups, a
        variant's own initial queries)."""
        return self.decoder(queries, state, variants=variants, groups=groups, variant_queries=variant_queries)

    def forward(self, features, masks, pos_embeds, variants: Optional[Mapping] = None, groups: Optional[Mapping] = None):
        """(decoder output, query selection, encoder state)."""
        state = self.encode(features, masks, pos_embeds)
        selection = self.select_queries(state)
        return self.decode(selection.queries, state, variants=variants, groups=groups), selection, state
