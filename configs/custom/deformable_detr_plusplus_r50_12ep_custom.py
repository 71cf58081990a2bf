"""Deformable-DETR++ R50, 12 epochs of COCO's schedule, on your own COCO-format data
(``configs/data/coco_json.py``: data.train_json=... data.train_images=... data.val_json=... data.val_images=...)."""
from ..data.coco_json import data, dataloader
from ..deformable_detr.deformable_detr_plusplus_r50_12ep import lr_multiplier, model, optimizer, train

model.transformer.num_classes = "${data.num_classes}"  # from the training json
train.output_dir = "./output/deformable_detr_plusplus_r50_12ep_custom"
