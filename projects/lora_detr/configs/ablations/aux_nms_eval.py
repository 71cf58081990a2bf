"""Evaluate the auxiliary (one-to-many) branch of an N_aux = 1 model with class-wise NMS instead of
the primary branch (Table 5 "Aux. w. NMS"; the paper gives no IoU threshold: 0.7). Evaluation only:

    python train_net.py --config-file projects/lora_detr/configs/ablations/aux_nms_eval.py --eval-only \
        train.init_checkpoint=output/lora_deformable_detr_r50_12ep_rank32/model_final.pth
"""
from .naux1 import dataloader, lr_multiplier, model, optimizer, train

model.eval_variant = "aux0"
model.eval_nms_threshold = 0.7
train.output_dir = "./output/lora_deformable_detr_r50_12ep_aux_nms_eval"
