"""AdamW parameter groups with per-module learning-rate factors (works on detectron2 v0.6 and newer)."""
from typing import Dict, List, Optional

import torch
from torch import nn

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


def param_groups(model: nn.Module, base_lr: float, weight_decay: float, lr_factors: Optional[Dict[str, float]] = None,
                 weight_decay_norm: float = 0.0, weight_decay_embedding: float = 0.0) -> List[Dict]:
    """One group per trainable parameter. ``lr_factors`` maps a name fragment to an LR factor, e.g.
    ``{"backbone": 0.1, "sampling_offsets": 0.1}`` (Deformable DETR's recipe; LoRA-DETR adds
    ``{"box_heads": 0.1}``); the first matching fragment wins. Norm and embedding weights use their own decay."""
    lr_factors = dict(lr_factors or {})
    groups, seen = [], set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            name = f"{module_name}.{param_name}" if module_name else param_name
            factor = next((f for fragment, f in lr_factors.items() if fragment in name), 1.0)
            decay = weight_decay
            if isinstance(module, NORM_TYPES):
                decay = weight_decay_norm
            elif isinstance(module, nn.Embedding):
                decay = weight_decay_embedding
            groups.append({"params": [param], "lr": base_lr * factor, "weight_decay": decay, "name": name})
    return groups


def build_adamw(model: nn.Module, lr=2e-4, weight_decay=1e-4, betas=(0.9, 0.999), lr_factors=None, **group_kwargs):
    return torch.optim.AdamW(param_groups(model, lr, weight_decay, lr_factors, **group_kwargs), lr=lr, betas=betas, weight_decay=weight_decay)
