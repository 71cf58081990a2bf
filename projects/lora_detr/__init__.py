"""LoRA-DETR (Zhang et al., "Integrating Diverse Assignment Strategies into DETRs") on the shared core."""
