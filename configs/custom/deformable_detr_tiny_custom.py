"""The CPU-sized Deformable-DETR++ of ``configs/shapes/deformable_detr_tiny.py`` (same schedule, 128 px
augmentations) on your own COCO-format data (``configs/data/coco_json.py`` keys)."""
from ..data.coco_json import data, dataloader
from ..data.shapes import dataloader as _shapes
from ..shapes.deformable_detr_tiny import lr_multiplier, model, optimizer, train

for _split in ("train", "test"):
    dataloader[_split].mapper = _shapes[_split].mapper
    dataloader[_split].num_workers = _shapes[_split].num_workers
dataloader.train.total_batch_size = _shapes.train.total_batch_size
model.transformer.num_classes = "${data.num_classes}"  # from the training json
train.output_dir = "./output/deformable_detr_tiny_custom"
