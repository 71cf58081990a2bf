"""Table 1's setting, row 7: the naive architecture (Fig. 1(c)), N_aux = 3 independent FFN branches,
diverse k {2, 4, 6} (48.0 AP; the training-cost comparison of Table 6). Table 1 predates Table 7's
last steps: focal loss on every branch (no assignment-quality loss) and no box-head LR change
("+ Architecture (b) -> (c)": 47.5, before "+ Box Head Learning Rate x 0.1" and "+ Assignment-Quality
Loss"). Its other rows: ``model.variants.ks=[6]`` (row 3), ``[6,6]`` / ``[4,6]`` (rows 4 / 5, the
latter Table 4's diverse k), ``[6,6,6]`` (row 6, ``identical_k.py``), Table 4's five k (row 8)."""
from detectron2.config import LazyCall as _L

from detr_plus.modeling import FocalLoss as _FocalLoss

from ..lora_deformable_detr_r50_12ep import dataloader, lr_multiplier, model, optimizer, train

model.variants.naive = True
model.criterion.class_loss = _L(_FocalLoss)()
model.criterion.loss_weights["class"] = 2.0
model.variants.class_loss = "focal"
optimizer.lr_factors.pop("box_heads")  # the box head at the full LR
train.output_dir = "./output/lora_deformable_detr_r50_12ep_naive_ffn_naux3"
