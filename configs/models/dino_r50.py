"""DINO-4scale (Zhang et al., "DINO: DETR with Improved DeNoising Anchor Boxes for End-to-End Object
Detection", arXiv 2203.03605), ResNet-50, 900 queries: the Deformable-DETR++ of
``deformable_detr_plusplus_r50.py`` (two-stage, mixed query selection, look-forward-twice, FFN 2048,
dropout 0) with what DINO's public code changes, plus contrastive denoising (Sec. 3.2, the core's
``ContrastiveDenoising`` group source, training only). Each change is a config key; the README's
DINO section lists the public code's facts behind them and the differences we keep."""
import copy

from detectron2.config import LazyCall as L

from detr_plus.engine.compose import named
from detr_plus.modeling import ContrastiveDenoising

from .deformable_detr_plusplus_r50 import model

# Proposals scored by the largest of C class logits and trained with the GT classes, on the top-k only.
model.transformer.update(enc_class_agnostic=False, enc_class_head_outputs=None, enc_loss_tokens="topk")
model.transformer.query_content_init = "xavier"  # DINO's transformer re-initialises its content embedding
model.transformer.decoder.update(
    query_position="box_sine",  # positions from each layer's boxes (sine + MLP), not a static part
    share_heads=True,  # one class and one box head for every decoder layer
    output_norm=True,  # a LayerNorm before the heads; the refinement chain reads the raw output
    inverse_sigmoid_eps=1e-3,
)
model.position_embedding.update(temperature=20, offset=0.0)  # DINO's sine encoding of pixel positions
model.criterion.loss_weights = {"class": 1.0, "bbox": 5.0, "giou": 2.0}  # matching costs stay 2 / 5 / 2
model.select_box_nums_for_evaluation = 300
model.group_sources = L(named)(
    dn=L(ContrastiveDenoising)(
        criterion=copy.deepcopy(model.criterion),  # the matching queries' weights (its matcher is never called)
        num_classes="${...transformer.num_classes}",
        d_model="${...transformer.decoder.d_model}",
        dn_number=100,
        label_noise_ratio=0.5,
        # The public config file says 0.4, but its training scripts (the published runs) pass 1.0.
        box_noise_scale=1.0,
    ),
)
