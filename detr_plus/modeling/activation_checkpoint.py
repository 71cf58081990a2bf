"""Activation checkpointing of transformer layers (``checkpoint_layers=True`` on the encoders and the
decoder): a layer keeps only its inputs during the forward pass and recomputes its activations in
the backward pass, trading about one more forward of each layer for their memory (Mr. DETR's users
fit Swin-L this way). Gradients are unchanged: the recomputation replays the same random state
(dropout), and it is off at inference and under ``torch.no_grad``."""
import torch
from torch.utils.checkpoint import checkpoint


def call_layer(layer: torch.nn.Module, enabled: bool, *args):
    """``layer(*args)``, checkpointed when ``enabled`` while training with gradients. The non-reentrant
    variant: it accepts and returns any structure (the decoder's ``LayerInputs`` / ``LayerOutput``)
    and lets gradients reach inputs that do not require them at the call."""
    if enabled and layer.training and torch.is_grad_enabled():
        return checkpoint(layer, *args, use_reentrant=False)
    return layer(*args)
