"""Mr. DETR on Deformable-DETR++ with 300 queries, R50, 12 epochs (published: 49.5 AP; docs/authors_code_facts.md#mr-detr-inference-and-published-numbers)."""
from .mr_deformable_detr_plusplus_r50_12ep import dataloader, lr_multiplier, model, optimizer, train

model.transformer.num_queries = 300
train.output_dir = "./output/mr_deformable_detr_plusplus_r50_12ep_300q"
