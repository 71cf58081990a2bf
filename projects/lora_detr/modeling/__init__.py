from .criterion import O2OMergedCriterion, union_pairs
from .lora import LORA_INITS, LoRAFFNBranch, lora_param_count
from .branches import DEFAULT_VFL_SCALE, TABLE4_DIVERSE_K, TABLE4_IDENTICAL_K, build_lora_branches

__all__ = ["O2OMergedCriterion", "union_pairs", "LORA_INITS", "LoRAFFNBranch", "lora_param_count", "DEFAULT_VFL_SCALE",
           "TABLE4_DIVERSE_K", "TABLE4_IDENTICAL_K", "build_lora_branches"]
