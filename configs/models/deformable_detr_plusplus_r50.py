"""Deformable-DETR++ (H-DETR's baseline, papers/README.md): two-stage, box refinement, mixed query
selection, look-forward-twice, FFN 2048, dropout 0, 900 queries."""
from .deformable_detr_r50 import model

model.transformer.num_queries = 900
model.transformer.mixed_query_selection = True
model.transformer.decoder.look_forward_twice = True
model.transformer.encoder.update(d_ffn=2048, dropout=0.0)
model.transformer.decoder.update(d_ffn=2048, dropout=0.0)
