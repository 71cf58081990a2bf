"""Trainer hooks of the shared core."""
import json
import logging
import os
from typing import Callable, Optional, Union

from detectron2.engine import HookBase
from detectron2.engine.hooks import BestCheckpointer
from detectron2.utils import comm

from .ema import ModelEMA

logger = logging.getLogger(__name__)

FIRST_LR_DECAY = "first_lr_decay"


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def first_lr_decay_iter(lr_multiplier: Callable[[float], float], max_iter: int) -> Optional[int]:
    """The first iteration whose LR multiplier is lower than the iteration before's, or None.

    Detectron2's ``LRScheduler`` hook trains iteration ``i`` at ``lr_multiplier(i / max_iter)``, so this
    follows ``train.max_iter`` (the step schedules here scale with it). Warm-up only raises the LR."""
    previous = lr_multiplier(0.0)
    for it in range(1, max_iter):
        value = lr_multiplier(it / max_iter)
        if value < previous:
            return it
        previous = value
    return None


def resolve_stop_update_iter(stop_update_iter: Union[None, int, str], lr_multiplier, max_iter: int) -> Optional[int]:
    """``train.ema.stop_update_iter``: None (never), an absolute iteration, or "first_lr_decay"."""
    if stop_update_iter is None or isinstance(stop_update_iter, int):
        return stop_update_iter
    if stop_update_iter != FIRST_LR_DECAY:
        raise ValueError(f"train.ema.stop_update_iter={stop_update_iter!r}: expected None, an iteration or {FIRST_LR_DECAY!r}")
    found = first_lr_decay_iter(lr_multiplier, max_iter)
    if found is None:
        logger.warning(f"train.ema.stop_update_iter={FIRST_LR_DECAY!r} but the LR never decays within "
                       f"{max_iter} iterations: the EMA is never frozen")
    return found


class EMAHook(HookBase):
    """Updates a ``ModelEMA`` after every step until ``stop_update_iter`` (exclusive), then freezes it.

    The freeze is OD-DETR's "Stop Update" (Table 5: stop updating the teacher after the learning
    rate decays); ``None`` never stops. The decision depends only on the iteration, so a run resumed
    after the stop keeps the frozen EMA that the checkpoint restored.
    """

    def __init__(self, ema: ModelEMA, stop_update_iter: Optional[int] = None):
        self.ema, self.stop_update_iter = ema, stop_update_iter
        self._stopped_logged = False

    def after_step(self):
        if self.stop_update_iter is not None and self.trainer.iter >= self.stop_update_iter:
            if not self._stopped_logged and comm.is_main_process():
                logger.info(f"EMA: stopped updating at iteration {self.stop_update_iter} (now {self.trainer.iter})")
                self._stopped_logged = True
            return
        self.ema.update(unwrap(self.trainer.model))
        self.trainer.storage.put_scalar("ema_decay", self.ema.current_decay(), smoothing_hint=False)


class KeepBestCheckpoint(BestCheckpointer):
    """Detectron2's ``BestCheckpointer`` (``model_best.pth``: the weights of the evaluation with the
    best ``val_metric``, default bbox AP) that survives ``--resume``: the best value and its iteration
    are also written to ``model_best.json`` beside the checkpoint and read back before training, so a
    resumed run replaces ``model_best.pth`` only with a better evaluation (the parent starts from
    none and would overwrite it with the first one)."""

    def _record_path(self) -> str:
        return os.path.join(self._checkpointer.save_dir, f"{self._file_prefix}.json")

    def before_train(self):
        path = self._record_path()
        if self.trainer.iter > 0 and os.path.exists(path):  # a resumed run: the best so far stays
            with open(path) as f:
                record = json.load(f)
            self.best_metric, self.best_iter = record["value"], record["iteration"]
            self._logger.info(f"{self._file_prefix}: best {self._val_metric} so far {self.best_metric:.4f} at iteration {self.best_iter}")

    def _update_best(self, val, iteration):
        if not super()._update_best(val, iteration):
            return False
        if comm.is_main_process():
            with open(self._record_path(), "w") as f:
                json.dump({"metric": self._val_metric, "value": val, "iteration": iteration}, f)
        return True
