"""The training step: AMP on CUDA, gradient clipping, and a clear error on a non-finite loss."""
import time

import torch
from detectron2.engine import SimpleTrainer
from detectron2.utils import comm


class NonFiniteLossError(FloatingPointError):
    pass


class DetrTrainer(SimpleTrainer):
    """``SimpleTrainer`` plus what DETR training needs: grad-norm clipping (``clip_grad_norm``, 0 = off),
    AMP with a grad scaler when ``amp`` and CUDA are both on (detectron2 v0.6's AMPTrainer asserts
    CUDA, engine/train_loop.py:387), and a ``NonFiniteLossError`` naming the iteration and the loss
    terms before any non-finite gradient reaches the weights."""

    def __init__(self, model, data_loader, optimizer, clip_grad_norm=0.1, amp=False):
        super().__init__(model, data_loader, optimizer)
        self.clip_grad_norm = clip_grad_norm
        self.amp = bool(amp) and torch.cuda.is_available()
        self.grad_scaler = torch.amp.GradScaler("cuda") if self.amp else None

    def run_step(self):
        assert self.model.training, "[DetrTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast("cuda", enabled=self.amp):
            loss_dict = self.model(data)
        losses = sum(loss_dict.values())
        if not self.all_finite(losses):
            bad = {k: float(v.detach()) for k, v in loss_dict.items() if not torch.isfinite(v)}
            raise NonFiniteLossError(f"Non-finite loss at iteration {self.iter}: {bad or {'total': float(losses)}}. "
                                     "The weights were not updated; the last checkpoint is intact.")
        self.optimizer.zero_grad()
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
            self.grad_scaler.unscale_(self.optimizer)
        else:
            losses.backward()
        if self.clip_grad_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
            self.storage.put_scalar("grad_norm", float(grad_norm), smoothing_hint=False)
        self._write_metrics(loss_dict, data_time)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    @staticmethod
    def all_finite(loss):
        """True when the loss is finite in every process (all stop together instead of some hanging in backward)."""
        finite = torch.isfinite(loss.detach()).to(torch.float32)
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        return bool(finite)

    def state_dict(self):
        state = super().state_dict()
        if self.grad_scaler is not None:
            state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if self.grad_scaler is not None and "grad_scaler" in state:
            self.grad_scaler.load_state_dict(state["grad_scaler"])
