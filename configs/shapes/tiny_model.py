"""How a COCO-sized model config is shrunk for 2 CPU cores on the embedded shapes dataset (128 px
images): a thin ResNet-18 trained from scratch, d_model 128 (4 heads), 3 encoder + 3 decoder
layers, 100 queries, 4 classes."""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from detr_plus.modeling import resnet_stages

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
