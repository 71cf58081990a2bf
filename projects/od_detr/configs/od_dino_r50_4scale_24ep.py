"""OD-DINO-4scale, R50, 24 epochs (OD-DETR Table 1: 51.8 AP vs DINO's 50.4): ``od_dino_r50_4scale_12ep.py``
on DINO's 24-epoch schedule; Stop Update freezes the teacher at its LR drop."""
from ....configs.dino.dino_r50_4scale_24ep import lr_multiplier, train
from .od_dino_r50_4scale_12ep import dataloader, model, optimizer
from .od_dino_r50_4scale_12ep import train as _od_train

train.ema, train.hooks = _od_train.ema, _od_train.hooks
train.output_dir = "./output/od_dino_r50_4scale_24ep"
