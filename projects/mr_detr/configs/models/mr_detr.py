"""What Mr. DETR changes in a ``DeformableDETR`` model config: ``model.update(mr_detr)``
(import it under a name starting with "_", which LazyConfig does not keep as a config key).

Default: Route-1 + Route-3 next to the primary Route-2 (project page route ablation, last row),
10 instruction tokens per decoder layer, o2m matcher and loss weights of papers/README.md.
"""
from detectron2.config import LazyCall as L

from detr_plus.modeling import OneToManyMatcher, SetCriterion
from projects.mr_detr.modeling import build_mr_detr_routes

mr_detr = dict(
    routes=L(build_mr_detr_routes)(
        num_layers="${..transformer.decoder.num_layers}",
        d_model="${..transformer.decoder.d_model}",
        d_ffn="${..transformer.decoder.d_ffn}",
        dropout="${..transformer.decoder.dropout}",
        routes=["route1", "route3"],  # any of "route1", "route3", "share_all"; [] = primary only
        num_instruction_tokens=10,
        num_unprompted_queries=0,  # no mask between instruction tokens and object queries
        own_streams=True,  # each route carries its own queries and boxes through all decoder layers
        loss_scale=1.0,  # every route's losses x this (the paper: same weights on every route)
        criterion=L(SetCriterion)(
            # quality = 0.3 class + 0.7 IoU, threshold 0.4, top-1 per GT kept, k = 6, cap 0.25 x Q
            matcher=L(OneToManyMatcher)(topk=6, threshold=0.4, class_weight=0.3, max_positive_ratio=0.25),
            loss_weights={"class": 2.0, "bbox": 5.0, "giou": 2.0},  # every layer of every route
            class_loss="focal",
        ),
    ),
    # papers/README.md "encoder (two-stage) losses x3": read as the (Hungarian) encoder loss x3.
    enc_loss_weight=3.0,
    # Evaluation of an auxiliary route (project page ablation, "o2m" / "w/ NMS" columns), off by
    # default: inference runs the primary route only. E.g. model.eval_route=route1
    # model.eval_nms_threshold=0.7 evaluates Route-1's last-layer predictions after class-wise NMS.
    eval_route=None,
    eval_nms_threshold=None,
    eval_pre_nms_topk=1000,
)
