"""Backbones other than the R50 of the model configs, as one call in a config (issue #31).

Swin-L is the backbone of the papers' best rows (OD-DETR Table 11, Mr. DETR's Swin-L table): the
ImageNet-22k model at 384 px (embed dim 192, depths 2-2-18-2, window 12), through timm
(``swin_large_patch4_window12_384``), its stride 8 / 16 / 32 outputs (channels 384, 768, 1536)
into the neck for 4 scales (stride 4 too for 5), stochastic depth 0.2 as DINO's Swin-L config.
Its weights are not an ImageNet checkpoint for Detectron2's checkpointer: give the classification
model's file as ``model.backbone.weights=/path/to/swin_large_patch4_window12_384_22k.pth`` (or
``model.backbone.weights=timm`` for timm's own copy); ``train.init_checkpoint`` stays empty.
"""
from detr_plus.modeling.timm_backbone import use_timm_backbone

SWIN_LARGE_384 = "swin_large_patch4_window12_384"
# The four Swin sizes as timm names them (T / S at 224 px on ImageNet-1k, B / L at 384 px on 22k, the
# checkpoints detection papers start from), with the stochastic depth of each: 0.2 for T and L (DINO's
# Swin-L), 0.3 for S and B (the Swin authors' detection configs); output channels 2x, 4x, 8x the
# embedding width (T / S 96, B 128, L 192) at strides 8 / 16 / 32.
SWIN = {
    "tiny": ("swin_tiny_patch4_window7_224", 0.2),
    "small": ("swin_small_patch4_window7_224", 0.3),
    "base": ("swin_base_patch4_window12_384", 0.3),
    "large": (SWIN_LARGE_384, 0.2),
}


def use_swin(model, train, size: str):
    """Swin-``size`` (tiny / small / base / large) in place of the config's ResNet; the weights through
    ``model.backbone.weights`` (see above), ``model.backbone.grad_checkpointing=True`` to checkpoint its
    stages."""
    if size not in SWIN:
        raise ValueError(f"use_swin: size {size!r} is not one of {sorted(SWIN)}")
    name, drop_path_rate = SWIN[size]
    use_timm_backbone(model, name, drop_path_rate=drop_path_rate)
    train.init_checkpoint = ""  # the backbone's weights come with model.backbone.weights


def use_swin_large(model, train):
    use_swin(model, train, "large")


def use_resnet101(model, train):
    """R101 in place of R50 (Detectron2's ResNet, the torchvision ImageNet weights converted)."""
    model.backbone.stages.depth = 101
    train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-101.pkl"
