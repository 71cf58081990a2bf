from .lora import LORA_INITS, LoRAFFNBranch, lora_param_count
from .routes import TABLE4_DIVERSE_K, TABLE4_IDENTICAL_K, build_lora_routes

__all__ = ["LORA_INITS", "LoRAFFNBranch", "lora_param_count", "TABLE4_DIVERSE_K", "TABLE4_IDENTICAL_K", "build_lora_routes"]
