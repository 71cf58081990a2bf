"""What LoRA-DETR changes in a ``DeformableDETR`` model config: ``model.update(lora_detr)``
(import it under a name starting with "_", which LazyConfig does not keep as a config key).

Default: N_aux = 3 LoRA branches with diverse k {2, 4, 6} (Table 4), rank 32, scaling 1.0, B = 0
init; Eq. 7 with tau 0.4, alpha 0.3; VFL+ (Eq. 8, gamma 1.5) on the primary branch (s = IoU,
weights 1 / 5 / 2) and on every branch (s = M, weights 2 / 5 / 2, averaged over the branches).
From the authors' public code (docs/authors_code_facts.md#lora-detr): every VFL+ term x 0.25
(``vfl_scale``), the branches refine their boxes from the primary queries' detached reference
(``variants.detach_reference``); the 900-query config also merges the one-to-one positives into each
branch's (``variants.merge_o2o_positives``); the encoder loss is focal 2 / 5 / 2 (``enc_criterion``).
"""
from detectron2.config import LazyCall as L

from detr_plus.modeling import FocalLoss, HungarianMatcher, SetCriterion, VarifocalPlusLoss
from detr_plus_projects.lora_detr.modeling import build_lora_branches

lora_detr = dict(
    # Primary (one-to-one) branch: Hungarian matching with the baseline's costs, VFL+ with s = IoU.
    criterion=L(SetCriterion)(
        matcher=L(HungarianMatcher)(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0),
        loss_weights={"class": 1.0, "bbox": 5.0, "giou": 2.0},
        # VFL+ with s = IoU; L(FocalLoss)() for the focal-loss baseline (then class weight 2.0). scale: the
        # authors' code multiplies the VFL+ terms by 0.25 before the sum / GT count (1.0: Eq. 8 as printed).
        class_loss=L(VarifocalPlusLoss)(gamma=1.5, scale=0.25, quality="iou"),
    ),
    # The authors' encoder loss is focal 2/5/2 with MS-DETR's encoder-proposal matching
    # (Hungarian on the encoder's predictions with the baseline's costs), not the primary VFL+ loss
    # (docs/authors_code_facts.md#lora-detr-vfl-and-loss-weights).
    enc_criterion=L(SetCriterion)(
        matcher=L(HungarianMatcher)(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0),
        loss_weights={"class": 2.0, "bbox": 5.0, "giou": 2.0},
        class_loss=L(FocalLoss)(),
    ),
    variants=L(build_lora_branches)(
        num_layers="${..transformer.decoder.num_layers}",
        d_model="${..transformer.decoder.d_model}",
        d_ffn="${..transformer.decoder.d_ffn}",
        dropout="${..transformer.decoder.dropout}",  # used by naive FFN branches only
        ks=[2, 4, 6],  # Table 4, diverse k: N_aux = len(ks)
        taus=None,  # Eq. 7 threshold: 0.4 for all, or one per branch
        alphas=None,  # Eq. 7 class weight: 0.3 for all, or one per branch
        rank=32,
        scaling=1.0,
        init="zero_b",  # or "normal": A, B ~ N(0, 1) / sqrt(r); or "xavier": A, B xavier-uniform (the authors' effective init)
        naive=False,  # True: an independent full FFN per branch (Fig. 1(c))
        class_loss="vfl_plus",  # or "focal"
        loss_weights={"class": 2.0, "bbox": 5.0, "giou": 2.0},
        vfl_scale=0.25,  # as the primary criterion's
        detach_reference=True,  # boxes refined from the primary queries' detached reference (authors' code)
        merge_o2o_positives=False,  # True: add the layer's one-to-one pairs to each branch's (900-query recipe)
    ),
    # Off by default (inference runs the main branch only). model.eval_variant=aux0
    # model.eval_nms_threshold=0.7 evaluates that branch after class-wise NMS (Table 5 "Aux. w. NMS").
    eval_variant=None,
    eval_nms_threshold=None,
)
