"""What Mr. DETR changes in a ``DeformableDETR`` model config: ``model.update(mr_detr)``
(import it under a name starting with "_", which LazyConfig does not keep as a config key).

Default: Route-1 + Route-3 next to the primary Route-2 (project page route ablation, last row),
10 instruction tokens per decoder layer, Route-3's own query selection, o2m matcher, loss weights
and encoder losses of the authors' code (docs/authors_code_facts.md#mr-detr).
"""
from detectron2.config import LazyCall as L

from detr_plus.modeling import FocalLoss, HungarianMatcher, OneToManyMatcher, SetCriterion
from detr_plus_projects.mr_detr.modeling import build_mr_detr_routes

mr_detr = dict(
    variants=L(build_mr_detr_routes)(
        num_layers="${..transformer.decoder.num_layers}",
        d_model="${..transformer.decoder.d_model}",
        d_ffn="${..transformer.decoder.d_ffn}",
        dropout="${..transformer.decoder.dropout}",
        num_heads="${..transformer.decoder.num_heads}",  # the blocks of the route ablation's own-block routes
        num_levels="${..transformer.decoder.num_levels}",
        num_points="${..transformer.decoder.num_points}",
        # any of "route1", "route3", "share_all", "own_self_attn", "own_cross_attn", "shared_self_attn",
        # "shared_cross_attn", "shared_ffn" (the route ablation, README); [] = primary only
        routes=["route1", "route3"],
        num_instruction_tokens=10,
        instruct_groups=False,  # query groups' queries (DINO's denoising) do not see the instruction tokens
        group_losses=[],  # ["dn"] on DINO: every route decodes the denoising queries and gets their losses
        own_streams=True,  # each route carries its own queries and boxes through all decoder layers
        loss_scale=1.0,  # every route's losses x this (the paper: same weights on every route)
        # Route-3's own top-k selection (its own class-agnostic proposal head: 1 class, as the ++
        # model's); None starts Route-3 from the primary queries (our reading before issue #11).
        route3_proposal_classes=1,
        criterion=L(SetCriterion)(
            # The authors' rules (issue #27 item 4): quality = 0.3 class + 0.7 IoU, threshold 0.4, top-1
            # per GT kept, each GT its top-min(c, 6) queries among all, positives randomly subsampled
            # (seeded) to a constant 225 (0.25 x 900; the tiny config scales it to its 100 queries).
            # Our earlier rules: selection="candidates", max_positives=None (a cap of 0.25 x Q by quality).
            matcher=L(OneToManyMatcher)(topk=6, threshold=0.4, class_weight=0.3, max_positive_ratio=0.25,
                                        selection="dynamic_k", max_positives=225, seed=0),
            loss_weights={"class": 2.0, "bbox": 5.0, "giou": 2.0},  # every layer of every route
            class_loss=L(FocalLoss)(),
        ),
    ),
    # The authors' code has two encoder losses, the primary selection's and Route-3's, each x3,
    # class-agnostic over all encoder tokens, matched to the GT by Hungarian matching on the anchors
    # without a class cost (docs/authors_code_facts.md#mr-detr-two-stage-selection-and-encoder-losses;
    # the ++ model's encoder loss is already class-agnostic over all tokens). enc_anchor_matcher=None matches on the predictions.
    enc_loss_weight=3.0,
    enc_anchor_matcher=L(HungarianMatcher)(cost_class=0.0, cost_bbox=5.0, cost_giou=2.0),
    # Evaluation of an auxiliary route (project page ablation, "o2m" / "w/ NMS" columns), off by
    # default: inference runs the primary route only. E.g. model.eval_variant=route1
    # model.eval_nms_threshold=0.7 evaluates Route-1's last-layer predictions after class-wise NMS.
    eval_variant=None,
    eval_nms_threshold=None,
    eval_pre_nms_topk=1000,
)


def on_dino(model):
    """The authors' DINO recipe on a DINO ``model`` already updated with ``mr_detr``
    (docs/authors_code_facts.md#mr-detr-on-dino): every route decodes the denoising queries and gets
    their losses, the instruction tokens hidden from them; class weight 2 for the primary, denoising
    and one-to-many terms; box noise 0.4; the encoder losses at the primary's weights (x1); Route-3's
    own proposal head has DINO's C classes (DINO's encoder is class-aware)."""
    model.variants.group_losses = ["dn"]
    model.variants.route3_proposal_classes = "${..transformer.num_classes}"
    model.criterion.loss_weights["class"] = 2.0
    model.group_sources.dn.criterion.loss_weights["class"] = 2.0
    model.group_sources.dn.box_noise_scale = 0.4
    model.enc_loss_weight = 1.0
    return model
