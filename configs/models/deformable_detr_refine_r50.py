"""Deformable DETR + iterative bounding box refinement (Zhu et al. Table 1; OD-DETR's "Def-DETR+",
45.4 AP at 50 epochs): the published single-stage model whose layers each refine the boxes with their
own class and box heads (the 2-d reference points become boxes after the first layer)."""
from .deformable_detr_r50 import model

model.transformer.decoder.box_refine = True
