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


def use_swin_large(model, train):
    use_timm_backbone(model, SWIN_LARGE_384, drop_path_rate=0.2)
    train.init_checkpoint = ""  # the backbone's weights come with model.backbone.weights


def use_resnet101(model, train):
    """R101 in place of R50 (Detectron2's ResNet, the torchvision ImageNet weights converted)."""
    model.backbone.stages.depth = 101
    train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-101.pkl"
