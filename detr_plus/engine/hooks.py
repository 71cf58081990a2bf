"""Trainer hooks of the shared core."""
import logging

from detectron2.engine import HookBase
from detectron2.utils import comm

from .ema import ModelEMA

logger = logging.getLogger(__name__)


def unwrap(model):
    return model.module if hasattr(model, "module") else model


class EMAHook(HookBase):
    """Updates a ``ModelEMA`` after every step until ``stop_update_iter`` (exclusive), then freezes it.

    The freeze is OD-DETR's "Stop Update" (Sec. 3.5: stop updating the teacher after the learning
    rate decays); ``None`` never stops. The EMA is saved in checkpoints by the checkpointer.
    """

    def __init__(self, ema: ModelEMA, stop_update_iter=None):
        self.ema, self.stop_update_iter = ema, stop_update_iter
        self._stopped_logged = False

    def after_step(self):
        if self.stop_update_iter is not None and self.trainer.iter >= self.stop_update_iter:
            if not self._stopped_logged and comm.is_main_process():
                logger.info(f"EMA: stop updating at iteration {self.trainer.iter}")
                self._stopped_logged = True
            return
        self.ema.update(unwrap(self.trainer.model))
        self.trainer.storage.put_scalar("ema_decay", self.ema.current_decay(), smoothing_hint=False)
