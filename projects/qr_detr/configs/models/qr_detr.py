"""What QR-DETR changes in a ``DeformableDETR`` config (import under names starting with "_"):

    model.transformer.decoder.layer_wrapper = _qr_layer_wrapper
    model.extra_output_criteria = _qr_exit_criteria
    train.hooks = _qr_hooks

Default: the combined scheme F -> SA -> CA over the decoder layers (Table 4's best row), scatter
(Eq. 8), FFN on the routed queries only (Sec. 5.4 c), training-only exit heads of their own per layer
(Table 2's parameter column; dropped at inference) supervised by the detection heads' set loss
(Hungarian, focal 2 / L1 5 / GIoU 2), and the routing-statistics hook (Table 2, Fig. 4).
"""
from detectron2.config import LazyCall as L

from detr_plus.modeling import FocalLoss, HungarianMatcher, SetCriterion
from detr_plus_projects.qr_detr.modeling import EEQRWrapper, RoutingStatsHook, exit_head_criteria

qr_layer_wrapper = L(EEQRWrapper)(
    d_model="${..d_model}",
    scheme=["F", "SA", "CA"],  # layer i: scheme[i % 3]; ["SA"] / ["CA"] / ["F"]: one wrapper everywhere
    regroup="scatter",  # "concat": Table 5's ablation
    ffn_on="routed",  # "all": the FFN on every query, as printed in Eq. 9-11
    start="random",  # the routers' init; "pass": every query passes at first (the plain decoder)
    exit_heads="own",  # training-only exit heads (Table 2: +1M), or "shared": the layer's detection heads (Eq. 5)
    gate="exit",  # sigma_EE scales the exit heads' input; "residual": also the routed update (a diagnostic)
    num_classes="${..num_classes}",
)
qr_exit_criteria = L(exit_head_criteria)(
    criterion=L(SetCriterion)(
        matcher=L(HungarianMatcher)(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0),
        loss_weights={"class": 2.0, "bbox": 5.0, "giou": 2.0},
        class_loss=L(FocalLoss)(),
    ),
)
qr_hooks = [L(RoutingStatsHook)(output_dir="${train.output_dir}", period=20)]
# The whole model delta as one dict, for ``detr_plus.engine.compose.compose_methods`` (another method
# beside QR-DETR in one config); ``d_model`` / ``num_classes`` are read where the wrapper lands.
qr_detr = dict(transformer=dict(decoder=dict(layer_wrapper=qr_layer_wrapper)), extra_output_criteria=qr_exit_criteria)
