"""DAB-Deformable-DETR (Liu et al. 2022; OD-DETR Table 1's "DAB-Def-DETR"): learned content queries and
learned 4-d anchor boxes, query positions recomputed from each layer's boxes (sine embedding + MLP),
box refinement, 300 queries, single-stage."""
from .deformable_detr_refine_r50 import model

model.transformer.query_init = "anchors"
model.transformer.decoder.query_position = "box_sine"
