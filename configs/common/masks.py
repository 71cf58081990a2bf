"""Instance masks for any model config (issue #32): one call adds the mask head to the model's heads
(``detr_plus.modeling.mask_head``: Mr. DETR's head on the last decoder layer, the coarsest encoder
level unless ``memory_level`` says another, and the backbone's res5 / res4 / res3) and makes the training mapper keep the masks. The
COCO evaluator then reports segm AP beside bbox AP (it sees ``pred_masks`` in the predictions).

``num_points``: points per mask of the point-sampled loss, 12544 (112 x 112) on COCO as Mr. DETR;
the shapes configs use 1024 (``configs/shapes/tiny_model.TINY_MASK_HEAD``: 16 x 20 logits at 128 x 160 px)."""
from detectron2.config import LazyCall as L

from detr_plus.modeling.heads import named_heads
from detr_plus.modeling.mask_head import MaskHead

FEATURES = ("res5", "res4", "res3")  # coarsest first, as the head adds them


def use_mask_head(model, dataloader, num_points=12544, **head):
    """``head``: other ``MaskHead`` arguments (``memory_level``, ``downsample_features``)."""
    # interpolations (from model.heads.mask.feature_channels): a later change of the backbone or width follows
    channels = {name: f"${{....neck.input_shapes.{name}.channels}}" for name in FEATURES}
    missing = [name for name in FEATURES if name not in model.neck.in_features]
    if missing:
        raise ValueError(f"use_mask_head: the mask head reads {list(FEATURES)} of the backbone, but the neck takes "
                         f"{list(model.neck.in_features)} (missing {missing})")
    if model.get("heads") is None:
        model.heads = L(named_heads)()
    model.heads.mask = L(MaskHead)(d_model="${...transformer.decoder.d_model}", feature_channels=channels, num_points=num_points, **head)
    dataloader.train.mapper.mask_format = "bitmask"
