"""DAB-DETR (Liu et al. 2022, arXiv:2201.12329), ResNet-50, 300 queries, single pattern, as its official
code: Conditional DETR's layout (``conditional_detr_r50.py``) with 4-d learned anchors (N(0, 1) logits)
whose sine embedding gives every layer's query position (MLP 512-256-256) and spatial query, width /
height-modulated cross-attention (Eq. 6), per-layer anchor refinement (detached; each layer's box is
predicted from the previous layer's undetached refinement, as the official code does), dropout 0,
PReLU FFNs, an encoder that scales its position embedding by an MLP of each layer's input, image
positions at temperature 20, class loss weight 1 and the top 300 at evaluation."""
from detr_plus.modeling import ConditionalSpatialQuery, StandardEncoder

from .conditional_detr_r50 import L, model

model.position_embedding.temperature = 20
model.transformer.encoder = L(StandardEncoder)(num_layers=6, d_model=256, d_ffn=2048, dropout=0.0, num_heads=8,
                                                activation="prelu", scale_position=True)
model.transformer.decoder.update(
    dropout=0.0, activation="prelu", query_position="box_sine", box_refine=True, look_forward_twice=True,
    spatial_query=L(ConditionalSpatialQuery)(d_model="${..d_model}", modulate_hw=True),
)
model.transformer.update(query_init="anchors", anchor_init="normal", reference_head_layers=1)
model.criterion.loss_weights = {"class": 1.0, "bbox": 5.0, "giou": 2.0}
model.select_box_nums_for_evaluation = 300
