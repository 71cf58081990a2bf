"""Exponential moving average of a model's weights (the EMA teacher of OD-DETR Sec. 3.1)."""
import contextlib
import math

import torch
from torch import nn


class ModelEMA:
    """ema = decay * ema + (1 - decay) * weights, for every parameter and floating buffer.

    ``warmup_iters`` ramps the decay as decay * (1 - exp(-updates / warmup_iters)) so an EMA that
    starts from random weights catches up quickly. Updates use ``torch._foreach_*`` (one fused
    kernel per step). Has ``state_dict``/``load_state_dict`` so checkpointers save and resume it.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9997, warmup_iters: int = 0):
        self.decay, self.warmup_iters = decay, warmup_iters
        self.updates = 0
        self.names = [n for n, t in model.state_dict().items() if t.dtype.is_floating_point]
        state = model.state_dict()
        self.shadow = {n: state[n].detach().clone() for n in self.names}

    def current_decay(self):
        if self.warmup_iters <= 0:
            return self.decay
        return self.decay * (1 - math.exp(-self.updates / self.warmup_iters))

    @torch.no_grad()
    def update(self, model: nn.Module):
        self.updates += 1
        decay = self.current_decay()
        state = model.state_dict()
        shadow = [self.shadow[n] for n in self.names]
        torch._foreach_mul_(shadow, decay)
        torch._foreach_add_(shadow, [state[n].detach() for n in self.names], alpha=1 - decay)

    @contextlib.contextmanager
    def applied_to(self, model: nn.Module):
        """Temporarily load the EMA weights into ``model`` (e.g. to evaluate them)."""
        backup = {n: t.detach().clone() for n, t in model.state_dict().items() if n in self.shadow}
        model.load_state_dict(self.shadow, strict=False)
        try:
            yield model
        finally:
            model.load_state_dict(backup, strict=False)

    def state_dict(self):
        return {"shadow": self.shadow, "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state):
        missing = set(self.names) - set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} tensors, e.g. {sorted(missing)[:3]}")
        for n in self.names:
            self.shadow[n].copy_(state["shadow"][n])
        self.updates = int(state["updates"])
