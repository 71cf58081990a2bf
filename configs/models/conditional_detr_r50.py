"""Conditional DETR (Meng et al. 2021, arXiv:2108.06152), ResNet-50, 300 queries, as its official code:
one feature level (C5, a plain 1x1 projection to 256), a 6-layer post-norm standard-attention encoder,
and a 6-layer decoder of conditional cross-attention (``ConditionalDecoderLayer``): content queries
start at zero, 2-d reference points from an MLP of the learned query position (computed once, no
refinement: each layer's box is its centre offset from the reference and a direct w / h), one class
and one box head for every layer after a final LayerNorm. Image positions: DETR's sine (no -0.5
offset, temperature 10000). QR-DETR's Table 1 baseline."""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from detr_plus.layers import PositionEmbeddingSine
from detr_plus.modeling import (
    ChannelMapper,
    ConditionalDecoderLayer,
    ConditionalSpatialQuery,
    DeformableDecoder,
    DeformableDETR,
    DeformableTransformer,
    StandardEncoder,
)

from .deformable_detr_r50 import model as _deformable

_backbone = _deformable.backbone  # the same R50 (FrozenBN, stem and res2 frozen), C5 only
_backbone.out_features = ["res5"]

model = L(DeformableDETR)(
    backbone=_backbone,
    neck=L(ChannelMapper)(input_shapes={"res5": L(ShapeSpec)(channels=2048)}, in_features=["res5"], out_channels=256,
                          num_outs=1, num_groups=0),
    position_embedding=L(PositionEmbeddingSine)(num_pos_feats=128, temperature=10000, offset=0.0),
    transformer=L(DeformableTransformer)(
        encoder=L(StandardEncoder)(num_layers=6, d_model=256, d_ffn=2048, dropout=0.1, num_heads=8, checkpoint_layers=False),
        decoder=L(DeformableDecoder)(
            checkpoint_layers=False,  # True: activation checkpointing of each layer while training
            num_layers=6, d_model=256, d_ffn=2048, dropout=0.1, num_heads=8, num_classes="${..num_classes}",
            layer_class=ConditionalDecoderLayer, spatial_query=L(ConditionalSpatialQuery)(d_model="${..d_model}"),
            box_refine=False, share_heads=True, query_position="static", output_norm=True,
            initial_reference_grad=True,  # the reference's sine embedding trains the reference MLP through the attention
            position_in_valid_region=False,
            inverse_sigmoid_eps=1e-3,  # the official code's clamp of the reference's inverse sigmoid
        ),
        num_classes=80,
        num_feature_levels=1,
        num_queries=300,
        query_init="embedding",
        query_content="zeros",
        reference_head_layers=2,
        level_embedding=False,
        xavier_init=True,
    ),
    criterion=_deformable.criterion,  # Hungarian 2 / 5 / 2, focal loss, weights 2 / 5 / 2: the same as Deformable DETR's
    select_box_nums_for_evaluation=100,
    size_divisibility=0,
)
