"""Exponential moving average of a model's weights, kept as a frozen copy of the model: the EMA
teacher of OD-DETR (Sec. 3.1) and the EMA evaluated with ``train.ema.eval_with_ema``."""
import copy
import math
from typing import Dict, List

import torch
from torch import nn

from ..modeling.variants import rename_legacy_keys


def _floating_tensors(module: nn.Module) -> Dict[str, torch.Tensor]:
    """The floating tensors of the state dict (parameters and persistent buffers) by name, each shared
    tensor once (a decoder whose layers or heads share weights lists them under their first name)."""
    tensors, seen = {}, set()
    for name, tensor in module.state_dict(keep_vars=True).items():
        if tensor.dtype.is_floating_point and id(tensor) not in seen:
            seen.add(id(tensor))
            tensors[name] = tensor
    return tensors


class ModelEMA:
    """ema = decay * ema + (1 - decay) * weights, for every parameter and floating buffer.

    ``module`` is a deep copy of the model in eval mode with ``requires_grad`` off: the teacher a
    model can run (``DeformableDETR.attach_teacher``) and what ``eval_with_ema`` evaluates. Updates are
    in place with ``torch._foreach_*`` (one fused kernel per step). ``warmup_iters`` ramps the decay as
    decay * (1 - exp(-updates / warmup_iters)). ``state_dict`` / ``load_state_dict`` keep the format
    {"shadow": {name: tensor}, "updates", "decay"}, so checkpointers save it and ``--resume``
    restores it; ``restored`` tells whether a load happened (else ``reset`` copies the model in).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9997, warmup_iters: int = 0):
        self.decay, self.warmup_iters = decay, warmup_iters
        self.updates = 0
        self.restored = False
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self._tensors = _floating_tensors(self.module)
        self.names: List[str] = list(self._tensors)

    @property
    def shadow(self) -> Dict[str, torch.Tensor]:
        """The averaged tensors by name (the EMA module's own tensors, each shared tensor once)."""
        return self._tensors

    def current_decay(self):
        if self.warmup_iters <= 0:
            return self.decay
        return self.decay * (1 - math.exp(-self.updates / self.warmup_iters))

    def _sources(self, model: nn.Module) -> List[torch.Tensor]:
        tensors = _floating_tensors(model)
        missing = [n for n in self.names if n not in tensors]
        if missing:
            raise KeyError(f"the model has no {missing[:3]}: not the model this EMA was made from")
        return [tensors[n].detach() for n in self.names]

    @torch.no_grad()
    def update(self, model: nn.Module):
        self.updates += 1
        decay = self.current_decay()
        shadow = [self._tensors[n] for n in self.names]
        torch._foreach_mul_(shadow, decay)
        torch._foreach_add_(shadow, self._sources(model), alpha=1 - decay)

    @torch.no_grad()
    def reset(self, model: nn.Module):
        """Start again from ``model``'s weights (e.g. after loading ``train.init_checkpoint``)."""
        torch._foreach_copy_([self._tensors[n] for n in self.names], self._sources(model))
        self.updates = 0

    def state_dict(self):
        state = self.module.state_dict()
        return {"shadow": {n: t for n, t in state.items() if t.dtype.is_floating_point}, "updates": self.updates, "decay": self.decay}

    @torch.no_grad()
    def load_state_dict(self, state):
        shadow = rename_legacy_keys(state["shadow"])  # an EMA saved before core v3's names loads too
        missing = set(self.names) - set(shadow)
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} tensors, e.g. {sorted(missing)[:3]}")
        for n in self.names:
            self._tensors[n].copy_(shadow[n])
        self.updates = int(state["updates"])
        self.restored = True
