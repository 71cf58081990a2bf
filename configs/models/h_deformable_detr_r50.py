"""H-Deformable-DETR (Jia et al., "DETRs with Hybrid Matching", arXiv 2207.13080), ResNet-50: the
Deformable-DETR++ of ``deformable_detr_plusplus_r50.py`` with 300 one-to-one queries and the hybrid
branch (the core's ``HybridQueries`` group source, training only): 1500 one-to-many queries, the
next proposals of the top-1800, matched with Hungarian to the GT set repeated k = 6 times, loss
weight 1 on every decoder layer, masked from the 300. Inference: the 300, as the ++."""
import copy

from detectron2.config import LazyCall as L

from detr_plus.engine.compose import named
from detr_plus.modeling import HybridQueries, RepeatedTargets

from .deformable_detr_plusplus_r50 import model

model.transformer.num_queries = 300
model.group_sources = L(named)(
    one2many=L(HybridQueries)(
        criterion=L(RepeatedTargets)(criterion=copy.deepcopy(model.criterion), repeats=6),  # the one-to-one set loss
        num_queries=1500,
        d_model="${...transformer.decoder.d_model}",
        loss_scale=1.0,
    ),
)
