"""Two-stage Deformable DETR with box refinement as published (Zhu et al. Table 1, Sec. A.4), 300
queries: encoder proposals scored by a class-agnostic head, the top-k give the reference boxes, and a
linear layer of their sine embedding gives the static positional part and the content query; the
encoder loss is class-agnostic over all encoder tokens (Hungarian-matched to the GT)."""
from .deformable_detr_refine_r50 import model

model.transformer.query_init = "proposals"
model.transformer.enc_class_agnostic = True
model.transformer.enc_loss_tokens = "all"
model.transformer.decoder.box_wh_bias = 0.0  # the official two-stage model resets the w / h bias to 0
