"""``mr_deformable_detr_plusplus_r50_12ep.py`` evaluated as the authors' public code evaluates (an
evaluation detail, not the method): class scores fused over the decoder layers
(``LayerScoreFusion``), the top 300 of queries x classes kept (ours: the last layer's, top 100).
For ``--eval-only`` of a checkpoint trained with the main config."""
from detectron2.config import LazyCall as _L

from detr_plus_projects.mr_detr.modeling import LayerScoreFusion as _LayerScoreFusion

from .mr_deformable_detr_plusplus_r50_12ep import dataloader, lr_multiplier, model, optimizer, train

model.eval_score_fusion = _L(_LayerScoreFusion)()
model.select_box_nums_for_evaluation = 300
train.output_dir = "./output/mr_deformable_detr_plusplus_r50_12ep_authors_eval"
