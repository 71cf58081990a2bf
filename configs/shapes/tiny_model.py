"""How a COCO-sized model config is shrunk for 2 CPU cores on the embedded shapes dataset (128 px
images): a thin ResNet-18 trained from scratch, d_model 128 (4 heads), 3 encoder + 3 decoder
layers, 100 queries, 4 classes."""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from detr_plus.modeling import resnet_stages

from ..common.coco_schedule import multistep_lr

WIDTH = 32  # ResNet-18 at half width: res3/res4/res5 have 64/128/256 channels


def shrink(model):
    model.backbone.stem.out_channels = WIDTH
    model.backbone.stem.norm = "BN"
    model.backbone.stages = L(resnet_stages)(depth=18, base_channels=WIDTH, norm="BN")
    model.backbone.freeze_at = 0
    model.neck.input_shapes = {f"res{i}": L(ShapeSpec)(channels=WIDTH * 2 ** (i - 2)) for i in (3, 4, 5)}
    model.neck.out_channels = 128
    model.position_embedding.num_pos_feats = 64  # d_model / 2
    model.neck.num_outs = 4
    model.transformer.encoder.update(num_layers=3, d_model=128, d_ffn=512, num_heads=4)
    model.transformer.decoder.update(num_layers=3, d_model=128, d_ffn=512, num_heads=4)
    model.transformer.num_classes = 4
    model.transformer.num_queries = 100
    model.pixel_mean = (127.5, 127.5, 127.5)
    model.pixel_std = (64.0, 64.0, 64.0)
    # At 128 px a stride-32 level has 4 cells: padding a batch to its largest image (the official
    # code, the published configs) leaves a last cell half over the image, so the levels disagree by
    # up to 1/8 of the image on where it ends (-5 to -7 AP here, docs/results.md); on COCO-sized
    # images the same half cell is about 1% of the image. A multiple of 32 aligns every level.
    model.size_divisibility = 32
    return model


# What `make train` (deformable_detr_tiny.py: Deformable-DETR++ tiny, 1000 iterations) writes.
PLUSPLUS_TINY_CHECKPOINT = "./output/shapes_deformable_detr_tiny/model_final.pth"


def start_from_trained_backbone(train, optimizer, max_iter=3000):
    """The recipe of the single-scale tiny DETRs' comparison (Conditional / DAB-DETR, QR-DETR on them,
    and the plain Deformable DETR beside them): the backbone of ``make train``'s checkpoint as the
    initialisation (``train.init_only``; COCO models start from an ImageNet backbone) at 0.1x the LR,
    ``max_iter`` iterations with the LR divided by 10 at 90 %, evaluated halfway and at the end. From
    a random backbone these models stay under 1 AP for thousands of iterations (docs/results.md).
    Returns the ``lr_multiplier``."""
    train.init_checkpoint = PLUSPLUS_TINY_CHECKPOINT
    train.init_only = ["backbone"]
    optimizer.lr_factors = dict(optimizer.lr_factors, backbone=0.1)
    train.max_iter = max_iter
    train.eval_period = max_iter // 2
    train.checkpointer = dict(period=max_iter // 2, max_to_keep=2)
    return multistep_lr(max_iter, [max_iter * 9 // 10], warmup_iters=50)


# The mask head at 128 px (configs/common/masks.py): the stride-64 level that Mr. DETR's head attends
# to is 2 x 2 cells there, too coarse for one mask per query (after 500 iterations every mask logit was
# still negative: segm AP 0); the head attends to the stride-32 level (4 x 4) and adds res5 / res4 /
# res3 at their own strides (DETR's layout), logits at stride 8 (16 x 16 at 128 px); 1024 points.
TINY_MASK_HEAD = dict(num_points=1024, memory_level=2, downsample_features=False)
