"""The training step: mixed precision, gradient clipping, and a clear error on a non-finite loss."""
import math
import time
from typing import Dict

import numpy as np
import torch
from detectron2.engine import SimpleTrainer
from detectron2.utils import comm


class NonFiniteLossError(FloatingPointError):
    pass


AMP_DTYPES = ("auto", "bfloat16", "float16")


def resolve_amp_dtype(name: str, device_type: str) -> torch.dtype:
    """``train.amp.dtype``: "auto" is bfloat16 where the device has it (CPU; CUDA from Ampere on),
    else float16; "bfloat16" / "float16" as named (float16 on CUDA only)."""
    if name not in AMP_DTYPES:
        raise ValueError(f"train.amp.dtype={name!r}: expected one of {AMP_DTYPES}")
    if name == "auto":
        bf16 = device_type != "cuda" or torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float16
    if name == "float16" and device_type != "cuda":
        raise ValueError(f"train.amp.dtype='float16' needs CUDA (the model is on {device_type}): use 'bfloat16'")
    return getattr(torch, name)


class DetrTrainer(SimpleTrainer):
    """``SimpleTrainer`` plus what DETR training needs: grad-norm clipping (``clip_grad_norm``, 0 = off),
    mixed precision (``amp``; ``amp_dtype`` see :func:`resolve_amp_dtype`: autocast on the model's
    device, with a grad scaler for float16; the deformable attention's sampling locations, the
    matching and the losses stay float32), and a ``NonFiniteLossError`` naming the iteration and the
    loss terms before any non-finite gradient reaches the weights; one host sync per step. (detectron2 v0.6's AMPTrainer
    asserts CUDA and float16, engine/train_loop.py:387.)"""

    def __init__(self, model, data_loader, optimizer, clip_grad_norm=0.1, amp=False, amp_dtype="auto"):
        super().__init__(model, data_loader, optimizer)
        self.clip_grad_norm = clip_grad_norm
        self.device_type = next(model.parameters()).device.type
        self.amp = bool(amp)
        self.amp_dtype = resolve_amp_dtype(amp_dtype, self.device_type) if self.amp else None
        use_scaler = self.amp_dtype == torch.float16
        self.grad_scaler = torch.amp.GradScaler(self.device_type) if use_scaler else None

    def run_step(self):
        assert self.model.training, "[DetrTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast(self.device_type, dtype=self.amp_dtype, enabled=self.amp):
            loss_dict = self.model(data)
        losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
            self.grad_scaler.unscale_(self.optimizer)
        else:
            losses.backward()
        grad_norm = losses.new_zeros(())
        if self.clip_grad_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        # The step's one host sync: the finite check (across processes), the grad norm and every loss
        # in one copy (the finite check comes after the backward, so nothing waits before it).
        finite, grad_norm, *loss_values = torch.stack([self.finite_everywhere(losses), grad_norm.detach().float(),
                                                       *(v.detach().float() for v in loss_dict.values())]).tolist()
        losses_on_host = dict(zip(loss_dict, loss_values))
        if not finite:
            self.optimizer.zero_grad()
            bad = {k: v for k, v in losses_on_host.items() if not math.isfinite(v)}
            raise NonFiniteLossError(f"Non-finite loss at iteration {self.iter}: {bad or {'total': float(losses)}}. "
                                     "The weights were not updated; the last checkpoint is intact.")
        if self.clip_grad_norm > 0:
            self.storage.put_scalar("grad_norm", grad_norm, smoothing_hint=False)
        self._write_metrics(losses_on_host, data_time)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def _write_metrics(self, losses_on_host: Dict[str, float], data_time: float, prefix: str = ""):
        """detectron2's ``SimpleTrainer.write_metrics`` for losses already on the host (floats): its
        own reads every loss tensor back one by one (a host sync each on a GPU)."""
        gathered = comm.gather(dict(losses_on_host, data_time=data_time))
        if comm.is_main_process():
            self.storage.put_scalar("data_time", max(m.pop("data_time") for m in gathered))  # the slowest worker's
            averaged = {k: float(np.mean([m[k] for m in gathered])) for k in gathered[0]}
            self.storage.put_scalar(f"{prefix}total_loss", sum(averaged.values()))
            if len(averaged) > 1:
                self.storage.put_scalars(**averaged)

    @staticmethod
    def finite_everywhere(loss):
        """1.0 when the loss is finite in every process, else 0.0, on the device (all processes stop
        together instead of some stepping and some not)."""
        finite = torch.isfinite(loss.detach()).to(torch.float32)
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        return finite

    def state_dict(self):
        state = super().state_dict()
        if self.grad_scaler is not None:
            state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if self.grad_scaler is not None and "grad_scaler" in state:
            self.grad_scaler.load_state_dict(state["grad_scaler"])
