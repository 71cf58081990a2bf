"""Mr. DETR on DINO-4scale, R50, 900 queries, 12 epochs (the authors' DINO recipe: 50.9 AP vs DINO's
49.0): Route-1 and Route-3 beside DINO's primary route (``configs/dino/dino_r50_4scale_12ep.py``,
its optimizer and schedule), with ``models/mr_detr.on_dino``: the routes carry DINO's denoising
queries with their losses, the instruction tokens are hidden from them, class weight 2, box noise
0.4. README "Mr. DETR on DINO" lists what differs from the authors' model."""
from ....configs.dino.dino_r50_4scale_12ep import dataloader, lr_multiplier, model, optimizer, train
from .models.mr_detr import mr_detr as _mr_detr
from .models.mr_detr import on_dino as _on_dino

model.update(_mr_detr)
_on_dino(model)
train.output_dir = "./output/mr_dino_r50_4scale_12ep"
