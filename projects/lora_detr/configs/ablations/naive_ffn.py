"""The naive architecture (Fig. 1(c)): one auxiliary branch with an independent full FFN per decoder
layer instead of LoRA, k {6} (Table 5 "w/o": 48.2 AP; Table 7 "+ Assignment-Quality Loss")."""
from ..lora_deformable_detr_r50_12ep import dataloader, lr_multiplier, model, optimizer, train

model.variants.ks = [6]
model.variants.naive = True
train.output_dir = "./output/lora_deformable_detr_r50_12ep_naive_ffn"
