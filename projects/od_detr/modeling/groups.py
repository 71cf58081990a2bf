"""OD-DETR's query groups as the ``group_sources`` dict of ``DeformableDETR`` (Fig. 2: the teacher-query
group of prediction distillation, Sec. 3.3, and the auxiliary groups of Sec. 3.4)."""
from typing import Dict, Optional

from torch import nn

from .auxiliary_groups import TeacherStageGroups
from .prediction_distillation import PredictionDistillationLoss, TeacherQueriesGroup


def build_od_detr_groups(criterion: nn.Module, prediction_distillation: bool = True, auxiliary_groups: bool = True,
                         pd_mode: str = "tood_listen2stu", ag_matching: str = "md", queries_per_gt: int = 2,
                         pd_loss_weights: Optional[Dict[str, float]] = None, alpha: float = 0.25, beta: float = 0.75,
                         gt_criterion: Optional[nn.Module] = None) -> Dict[str, nn.Module]:
    """``{"pd": TeacherQueriesGroup, "ag": TeacherStageGroups}`` (either can be switched off: Table 2).

    ``criterion`` trains the auxiliary groups (a ``MatchingDistillation`` for ``ag_matching="md"``);
    ``pd_mode`` and ``ag_matching`` are Table 5's and Table 6's variants; ``gt_criterion`` is the
    GT loss of the "query_prior" PD variant (default: ``criterion``)."""
    groups = {}
    if prediction_distillation:
        loss = PredictionDistillationLoss(pd_loss_weights, alpha=alpha, beta=beta)
        groups["pd"] = TeacherQueriesGroup(loss, gt_criterion=gt_criterion or criterion, mode=pd_mode)
    if auxiliary_groups:
        groups["ag"] = TeacherStageGroups(criterion, queries_per_gt=queries_per_gt, matching=ag_matching)
    return groups
