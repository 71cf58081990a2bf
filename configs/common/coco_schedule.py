"""Step schedules on COCO at batch 16 (7500 iterations an epoch): LR x0.1 near the end."""
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

ITERS_PER_EPOCH = 7500


def multistep_lr(max_iter, milestones, warmup_iters=0):
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=list(milestones), num_updates=max_iter),
        warmup_length=warmup_iters / max_iter,
        warmup_factor=0.001,
    )


lr_multiplier_12ep = multistep_lr(12 * ITERS_PER_EPOCH, [11 * ITERS_PER_EPOCH])
lr_multiplier_24ep = multistep_lr(24 * ITERS_PER_EPOCH, [22 * ITERS_PER_EPOCH])
lr_multiplier_50ep = multistep_lr(50 * ITERS_PER_EPOCH, [40 * ITERS_PER_EPOCH])
