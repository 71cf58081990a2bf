"""Two-stage Deformable DETR with box refinement as published (Zhu et al. Table 1, Sec. A.4), 300
queries: encoder proposals scored by the first logit of a C-wide head, the top-k give the reference
boxes, and a linear layer of their sine embedding gives the static positional part and the content
query; the encoder loss is the focal loss over every encoder token's C logits with every GT
labelled 0 (Hungarian-matched to the GT), as the official code computes it."""
from .deformable_detr_refine_r50 import model

model.transformer.query_init = "proposals"
model.transformer.enc_class_agnostic = True  # binary targets, top-k by the first logit
model.transformer.enc_class_head_outputs = "${.num_classes}"  # the official code's C-wide head (the ++: 1, H-DETR's)
model.transformer.enc_loss_tokens = "all"
model.transformer.decoder.box_wh_bias = 0.0  # the official two-stage model resets the w / h bias to 0
