"""Detection-head helpers shared by the decoder, the two-stage query selection and methods' own heads."""
from torch import nn

PRIOR_PROBABILITY_LOGIT = -4.59511985  # log(0.01 / 0.99): every class starts at probability 0.01 (focal loss init)


def init_detection_heads(class_head: nn.Linear, box_head: nn.Module):
    """The init of a class head and a box-offset MLP: class prior probability 0.01 (Lin et al.,
    focal loss Sec. 4.1), zero box offsets (a query's box starts at its reference)."""
    nn.init.constant_(class_head.bias, PRIOR_PROBABILITY_LOGIT)
    nn.init.zeros_(box_head.layers[-1].weight)
    nn.init.zeros_(box_head.layers[-1].bias)
