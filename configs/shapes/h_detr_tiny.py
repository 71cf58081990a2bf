"""H-Deformable-DETR shrunk for 2 CPU cores: the ++ tiny (``deformable_detr_tiny.py``, 100 queries,
its baseline) with 200 one-to-many queries (a 128 px image has 340 encoder positions over its four
levels, too few for H-DETR's 5x) and k = 6."""
from ..models.h_deformable_detr_r50 import model
from .deformable_detr_tiny import dataloader, lr_multiplier, optimizer, train
from .tiny_model import shrink

model = shrink(model)
model.group_sources.one2many.num_queries = 200
train.output_dir = "./output/shapes_h_detr_tiny"
