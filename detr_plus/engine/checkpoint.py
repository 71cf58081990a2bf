"""Checks of a checkpoint against the model it is loaded into: Detectron2's checkpointer only warns
about (and skips) parameters whose shapes differ, which would evaluate a half-random model."""
import os
from typing import Dict, Optional

import torch
from torch import nn

from ..modeling.variants import TRAINING_ONLY_PREFIXES, rename_legacy_keys

CLASS_HEAD_SUFFIX = "class_heads.0.weight"


def checkpoint_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The model weights of a Detectron2 checkpoint file (``{"model": ...}``) or of a bare state dict."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    return checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else checkpoint


def check_checkpoint_matches(model: nn.Module, path: str, require_all: bool = False, state: Optional[Dict] = None) -> None:
    """``ValueError`` naming the parameters of checkpoint ``path`` whose shapes differ from ``model``'s;
    when the class heads differ, the message leads with both class counts (a checkpoint trained on
    other classes than the dataset's). ``require_all``: also the model's tensors the checkpoint lacks
    and the checkpoint's the model lacks, training-only ones (variants, group sources, extra outputs)
    excepted, so any method's checkpoint runs in its baseline's config and vice versa; older
    checkpoints' names (``routes.*``, ``query_groups.*``) count as their core v3 names. A path that
    is not a local file (a URL) is left to the checkpointer. ``state``: the file's weights, if already loaded."""
    if not os.path.isfile(path):
        return
    state = rename_legacy_keys(checkpoint_state_dict(path) if state is None else state)
    own = model.state_dict()
    mismatched = {k: (tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
                  if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)}
    lines = [f"  {k}: checkpoint {a}, model {b}" for k, (a, b) in sorted(mismatched.items())]
    if require_all:
        lines += [f"  {k}: not in the checkpoint" for k in sorted(set(own) - set(state)) if not k.startswith(TRAINING_ONLY_PREFIXES)]
        lines += [f"  {k}: not in the model" for k in sorted(set(state) - set(own)) if not k.startswith(TRAINING_ONLY_PREFIXES)]
    if not lines:
        return
    heads = [k for k in mismatched if k.endswith(CLASS_HEAD_SUFFIX)]
    lead = ""
    if heads:
        theirs, ours = mismatched[heads[0]][0][0], mismatched[heads[0]][1][0]
        lead = (f"the checkpoint predicts {theirs} classes, the model {ours} (model.transformer.num_classes, "
                f"from data.num_classes / the dataset's categories); ")
    raise ValueError(f"Checkpoint '{path}' does not match the config: {lead}{len(lines)} tensor(s) differ:\n" + "\n".join(lines))
