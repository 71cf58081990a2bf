"""Deformable-DETR++ (H-DETR's baseline; docs/authors_code_facts.md#shared-deformable-detr-conventions):
the published two-stage model with mixed
query selection (learned content queries, reference boxes and positional part from the top-k
proposals), look-forward-twice, FFN 2048, dropout 0, 900 queries."""
from .deformable_detr_two_stage_r50 import model

model.transformer.num_queries = 900
model.transformer.query_init = "mixed"
model.transformer.enc_class_head_outputs = 1  # H-DETR's code: one foreground score per proposal
model.transformer.decoder.look_forward_twice = True
model.transformer.encoder.update(d_ffn=2048, dropout=0.0)
model.transformer.decoder.update(d_ffn=2048, dropout=0.0)
