from .eeqr import FFN_ON, MODES, REGROUPS, EEQRLayer, EEQRWrapper, exit_head_criteria
from .statistics import RoutingStatsHook, evaluate_routing, plot_routing, routed_layers, summary

__all__ = ["FFN_ON", "MODES", "REGROUPS", "EEQRLayer", "EEQRWrapper", "exit_head_criteria", "RoutingStatsHook", "evaluate_routing", "plot_routing",
           "routed_layers", "summary"]
