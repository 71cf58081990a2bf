from .instructive_attention import InstructiveSelfAttentionBranch
from .routes import ROUTE_NAMES, build_mr_detr_routes

__all__ = ["InstructiveSelfAttentionBranch", "ROUTE_NAMES", "build_mr_detr_routes"]
