"""What OD-DETR changes in a ``DeformableDETR`` config: ``model.update(od_detr)`` and
``train.update(od_detr_train)`` (import them under names starting with "_", which LazyConfig does not
keep as config keys).

Default: QFL (Eq. 2) as the class loss; matching distillation (Eq. 3-4, w_d 0.51 on regression);
prediction distillation with TOOD-weight and Listen2stu (Eq. 5-6, alpha 0.25, beta 0.75); an
auxiliary group per teacher decoder stage, 2 queries per GT, with matching distillation; the EMA
teacher (decay 0.9996) frozen at the first LR decay (Stop Update); one decoder layer shared by all
stages (Appendix B, Table 8). The matching-stability hook logs Fig. 1 / Fig. 5's metrics.
"""
from detectron2.config import LazyCall as L

from detr_plus.modeling import HungarianMatcher, QualityFocalLoss, SetCriterion
from detr_plus_projects.od_detr.modeling import MatchingDistillation, MatchingStabilityHook, build_od_detr_groups


# Def-DETR's class / L1 / GIoU weights, which OD-DETR keeps; on DINO, DINO's (``od_detr_with``).
DEFORMABLE_WEIGHTS = {"class": 2.0, "bbox": 5.0, "giou": 2.0}
DINO_WEIGHTS = {"class": 1.0, "bbox": 5.0, "giou": 2.0}


def qfl_criterion(loss_weights=DEFORMABLE_WEIGHTS):
    """The base loss: Hungarian matching (focal class cost 2, L1 5, GIoU 2), QFL / L1 / GIoU at ``loss_weights``."""
    return L(SetCriterion)(
        matcher=L(HungarianMatcher)(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0),
        loss_weights=dict(loss_weights),
        class_loss=L(QualityFocalLoss)(),
    )


def md_criterion(loss_weights=DEFORMABLE_WEIGHTS):
    return L(MatchingDistillation)(
        criterion=qfl_criterion(loss_weights),
        classification=True,  # Eq. 3 (multi-target QFL); False: MD on regression only
        regression=True,  # Eq. 4; False: Table 4 row 1 (MD on classification only)
        conditional_iou=None,  # 0.5: StageInteractor's conditional MD (Table 3)
        box_down_weight=0.51,  # w_d on regression (Table 4 row 3); 1.0: row 2
        class_down_weight=None,  # 0.51: w_d on classification too (row 4)
    )


def od_detr_with(loss_weights):
    """OD-DETR's delta with the baseline's loss weights on its QFL, MD, PD and AG terms (the paper
    keeps Def-DETR's; for DINO we keep DINO's, README reading 14)."""
    return dict(
        criterion=md_criterion(loss_weights),
        # Two-stage models: the student decodes its proposals at the tokens the teacher selected, so
        # query i and its teacher twin sit on one proposal (README reading 11); no-op for static queries.
        select_teacher_proposals=True,
        group_sources=L(build_od_detr_groups)(
            criterion=md_criterion(loss_weights),  # the auxiliary groups' loss: matching distillation as in the main group
            prediction_distillation=True,
            auxiliary_groups=True,
            pd_mode="tood_listen2stu",  # Table 5: "naive", "tood", "tood_listen2stu", "query_prior"
            ag_matching="md",  # Table 6: "original", "rematch", "md"
            queries_per_gt=2,
            pd_loss_weights=dict(loss_weights),
            alpha=0.25,
            beta=0.75,
        ),
    )


od_detr = od_detr_with(DEFORMABLE_WEIGHTS)
od_dino = od_detr_with(DINO_WEIGHTS)
od_detr_ema = dict(enabled=True, decay=0.9996, warmup_iters=0, stop_update_iter="first_lr_decay", eval_with_ema=False)
od_detr_hooks = [
    L(MatchingStabilityHook)(dataset_name="${dataloader.test.dataset.names}", output_dir="${train.output_dir}",
                             num_images=32, period=1000, min_size=800, max_size=1333),
]
