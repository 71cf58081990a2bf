"""Deformable DETR as published (Zhu et al. 2021, Table 1 "Deformable DETR"), ResNet-50, 300 queries:
single-stage, a learned query embedding split into a static positional part and the content query,
2-d reference points from a linear layer of the positional part, no box refinement (one class and
one box head shared by all decoder layers). QR-DETR's baseline (38.3 AP at 12 epochs)."""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BasicStem, ResNet

from detr_plus.layers import PositionEmbeddingSine
from detr_plus.modeling import (
    ChannelMapper,
    DeformableDecoder,
    DeformableDETR,
    DeformableEncoder,
    DeformableTransformer,
    FocalLoss,
    HungarianMatcher,
    SetCriterion,
    resnet_stages,
)

model = L(DeformableDETR)(
    backbone=L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
        stages=L(resnet_stages)(depth=50, norm="FrozenBN"),
        out_features=["res3", "res4", "res5"],
        freeze_at=2,  # stem and res2 frozen, res3-res5 train (the official code)
    ),
    neck=L(ChannelMapper)(
        input_shapes={"res3": L(ShapeSpec)(channels=512), "res4": L(ShapeSpec)(channels=1024), "res5": L(ShapeSpec)(channels=2048)},
        in_features=["res3", "res4", "res5"],
        out_channels=256,
        num_outs=4,
    ),
    position_embedding=L(PositionEmbeddingSine)(num_pos_feats=128),
    transformer=L(DeformableTransformer)(
        encoder=L(DeformableEncoder)(num_layers=6, d_model=256, d_ffn=1024, dropout=0.1, num_heads=8, num_levels=4, num_points=4,
                                     checkpoint_layers=False),  # True: activation checkpointing (README, memory)
        decoder=L(DeformableDecoder)(
            checkpoint_layers=False,  # True: activation checkpointing of each layer while training
            num_layers=6, d_model=256, d_ffn=1024, dropout=0.1, num_heads=8, num_levels=4, num_points=4,
            num_classes="${..num_classes}", box_refine=False, look_forward_twice=False, share_heads=None,
            share_layers=False, query_position="static",
            initial_reference_grad=True,  # the official decoder samples at the undetached initial reference points
            box_wh_bias=-2.0,  # the official box head: initial w / h about 0.12
        ),
        num_classes=80,
        num_feature_levels=4,
        num_queries=300,
        query_init="embedding",
        xavier_init=True,
    ),
    criterion=L(SetCriterion)(
        matcher=L(HungarianMatcher)(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0),
        loss_weights={"class": 2.0, "bbox": 5.0, "giou": 2.0},
        class_loss=L(FocalLoss)(),
    ),
    select_box_nums_for_evaluation=100,
    enc_loss_weight=1.0,
    size_divisibility=0,  # a batch is padded to its largest image (the official code), no multiple of 32
)
