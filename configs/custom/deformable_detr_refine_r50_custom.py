"""Deformable DETR + iterative box refinement R50 (the published model), 12 epochs of COCO's
schedule, on your own COCO-format data (``configs/data/coco_json.py``); start it from the converted
official weights with ``train.init_checkpoint=... train.reinit_class_heads=True``."""
from ..data.coco_json import data, dataloader
from ..deformable_detr.deformable_detr_refine_r50_12ep import lr_multiplier, model, optimizer, train

model.transformer.num_classes = "${data.num_classes}"  # from the training json
train.output_dir = "./output/deformable_detr_refine_r50_custom"
