"""LoRA-DETR on Deformable-DETR++ (two-stage, box refinement, mixed query selection, look forward
twice, FFN 2048, dropout 0), R50, 900 queries, 12 epochs: N_aux = 3, k {2, 4, 6}, rank 48
(Table 2 "LoRA-DETR 3": 51.0 AP, 51.4M parameters = 47.5M + 3 x 1.33M). As the authors' 900-query
recipe, each branch's positives include the layer's one-to-one positives
(docs/authors_code_facts.md#lora-detr-one-to-many-assignment).
"""
from ....configs.deformable_detr.deformable_detr_plusplus_r50_12ep import dataloader, lr_multiplier, model, train
from .lora_deformable_detr_r50_12ep import optimizer  # LoRA-DETR's LR factors (the ++ baseline's optimizer is the two-stage one's)
from .models.lora_detr import lora_detr as _lora_detr  # "_": not itself a key of this config

model.update(_lora_detr)
model.variants.rank = 48
model.variants.merge_o2o_positives = True  # "The 900-query recipe adds the o2o positives to each branch's positives"
train.output_dir = "./output/lora_deformable_detr_plusplus_r50_12ep"
