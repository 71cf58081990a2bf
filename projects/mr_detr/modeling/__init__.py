from .instructive_attention import InstructiveSelfAttentionBranch
from .routes import ROUTE_NAMES, build_mr_detr_routes
from .score_fusion import LayerScoreFusion

__all__ = ["InstructiveSelfAttentionBranch", "LayerScoreFusion", "ROUTE_NAMES", "build_mr_detr_routes"]
