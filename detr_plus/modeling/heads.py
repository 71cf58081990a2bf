"""Detection-head helpers shared by the decoder, the two-stage query selection and methods' own heads,
and the transformer's matrix init that methods' modules inside the transformer share."""
import torch
from torch import nn

PRIOR_PROBABILITY_LOGIT = -4.59511985  # log(0.01 / 0.99): every class starts at probability 0.01 (focal loss init)


def init_detection_heads(class_head: nn.Linear, box_head: nn.Module):
    """The init of a class head and a box-offset MLP: class prior probability 0.01 (Lin et al.,
    focal loss Sec. 4.1), zero box offsets (a query's box starts at its reference)."""
    nn.init.constant_(class_head.bias, PRIOR_PROBABILITY_LOGIT)
    nn.init.zeros_(box_head.layers[-1].weight)
    nn.init.zeros_(box_head.layers[-1].bias)


@torch.no_grad()
def xavier_matrices(*modules: nn.Module) -> None:
    """Xavier-uniform on every parameter with more than one dimension: the published Deformable-DETR
    transformer's init, which the official code (and Mr. DETR's, LoRA-DETR's) apply to every module
    built inside the transformer."""
    for module in modules:
        for p in module.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)


def named_heads(**heads: nn.Module) -> dict:
    """``model.heads`` in a LazyConfig: ``L(named_heads)(mask=L(MaskHead)(...))`` (a LazyCall, so that
    instantiate builds the heads inside; a plain dict would stay a config)."""
    return dict(heads)
