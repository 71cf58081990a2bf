from .auxiliary_groups import AG_MATCHINGS, TeacherStageGroups
from .groups import build_od_detr_groups
from .matching_distillation import MatchingDistillation
from .prediction_distillation import PD_MODES, PredictionDistillationLoss, TeacherQueriesGroup
from .stability import MatchingStabilityHook, assignment_vectors, consistency, instability, plot_stability

__all__ = [
    "AG_MATCHINGS", "PD_MODES", "MatchingDistillation", "MatchingStabilityHook", "PredictionDistillationLoss",
    "TeacherQueriesGroup", "TeacherStageGroups", "assignment_vectors", "build_od_detr_groups", "consistency",
    "instability", "plot_stability",
]
