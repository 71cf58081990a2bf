"""Checks of a checkpoint against the model it is loaded into: Detectron2's checkpointer only warns
about (and skips) parameters whose shapes differ, which would evaluate a half-random model."""
import os
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ..modeling.variants import is_training_only, rename_legacy_keys

CLASS_HEAD_SUFFIX = "class_heads.0.weight"


def checkpoint_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The model weights of a Detectron2 checkpoint file (``{"model": ...}``) or of a bare state dict."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    return checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else checkpoint


def is_class_head(key: str, theirs: Tuple[int, ...], ours: Tuple[int, ...], counts: Tuple[int, int]) -> bool:
    """A class head's tensor (any layer's, the encoder's, a method's): its name says class and its
    shapes differ only in the rows, which are the two class counts."""
    return "class" in key and (theirs[0], ours[0]) == counts and theirs[1:] == ours[1:]


def load_strictly(config_file: str, state: Dict[str, torch.Tensor], overrides=()) -> nn.Module:
    """Instantiate ``config_file``'s model (with ``key=value`` ``overrides``) and load ``state`` into it
    with ``strict=True``: the check of the checkpoint tools' outputs."""
    from detectron2.config import LazyConfig, instantiate

    from .config import apply_overrides

    model = instantiate(apply_overrides(LazyConfig.load(config_file), list(overrides)).model)
    model.load_state_dict(state, strict=True)
    return model


def check_checkpoint_matches(model: nn.Module, path: str, require_all: bool = False, state: Optional[Dict] = None,
                             new_classes: bool = False) -> List[str]:
    """``ValueError`` naming the parameters of checkpoint ``path`` whose shapes differ from ``model``'s;
    when the class heads differ, the message leads with both class counts (a checkpoint trained on
    other classes than the dataset's). ``require_all``: also the model's tensors the checkpoint lacks
    and the checkpoint's the model lacks, training-only ones (variants, group sources, extra outputs)
    excepted, so any method's checkpoint runs in its baseline's config and vice versa; older
    checkpoints' names (``routes.*``, ``query_groups.*``) count as their core v3 names. A path that
    is not a local file (a URL) is left to the checkpointer. ``state``: the file's weights, if already loaded.

    ``new_classes`` (fine-tuning on other classes, ``train.reinit_class_heads``): class-head tensors
    whose row count is the checkpoint's class count instead of the model's are not an error; their
    names are returned (the checkpointer skips them, so they keep the model's initialisation)."""
    if not os.path.isfile(path):
        return []
    state = rename_legacy_keys(checkpoint_state_dict(path) if state is None else state)
    own = model.state_dict()
    mismatched = {k: (tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
                  if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)}
    heads = [k for k in mismatched if k.endswith(CLASS_HEAD_SUFFIX)]
    counts = (mismatched[heads[0]][0][0], mismatched[heads[0]][1][0]) if heads else None
    reinitialised = sorted(k for k in mismatched if new_classes and counts and is_class_head(k, *mismatched[k], counts))
    lines = [f"  {k}: checkpoint {a}, model {b}" for k, (a, b) in sorted(mismatched.items()) if k not in reinitialised]
    if require_all:
        lines += [f"  {k}: not in the checkpoint" for k in sorted(set(own) - set(state)) if not is_training_only(k)]
        lines += [f"  {k}: not in the model" for k in sorted(set(state) - set(own)) if not is_training_only(k)]
    if not lines:
        return reinitialised
    lead = ""
    if counts and not new_classes:
        lead = (f"the checkpoint predicts {counts[0]} classes, the model {counts[1]} (model.transformer.num_classes, "
                f"from data.num_classes / the dataset's categories; to fine-tune on these classes, "
                f"train.reinit_class_heads=True re-initialises the class heads); ")
    raise ValueError(f"Checkpoint '{path}' does not match the config: {lead}{len(lines)} tensor(s) differ:\n" + "\n".join(lines))


def load_modules(model: nn.Module, path: str, modules: List[str]) -> int:
    """Load only the weights of ``modules`` (top-level names such as ``"backbone"``) from checkpoint
    ``path`` into ``model`` (``train.init_only``): a detector's backbone as another detector's
    initialisation, as COCO models start from an ImageNet backbone. Every model tensor under those
    names must be in the checkpoint with its shape; ``ValueError`` names the file and the tensors
    otherwise. Returns the number of tensors loaded."""
    if not os.path.isfile(path):
        raise ValueError(f"train.init_only={list(modules)}: train.init_checkpoint {path!r} is not a local file (train the model "
                         "that writes it first: the shapes configs' trained backbone comes from `make train`)")
    prefixes = tuple(f"{m}." for m in modules)
    own = model.state_dict()
    unknown = [m for m in modules if not any(k.startswith(f"{m}.") for k in own)]
    if unknown:
        raise ValueError(f"train.init_only={list(modules)}: the model has no module {', '.join(map(repr, unknown))} "
                         f"(its modules: {', '.join(sorted({k.split('.')[0] for k in own}))})")
    state = {k: v for k, v in rename_legacy_keys(checkpoint_state_dict(path)).items() if k.startswith(prefixes)}
    check_checkpoint_matches(model, path, state=state)
    missing = sorted(k for k in own if k.startswith(prefixes) and k not in state)
    if missing:
        raise ValueError(f"train.init_only={list(modules)}: checkpoint '{path}' lacks {len(missing)} of the model's "
                         f"tensors under these names: {', '.join(missing[:5])}")
    model.load_state_dict(state, strict=False)
    return len(state)


def average_checkpoints(paths: List[str]) -> Dict[str, torch.Tensor]:
    """The element-wise mean of the model weights of several checkpoints of one model (the last
    checkpoints of a run, as the Mr. DETR authors recommend for a more stable final model). Floating
    tensors are averaged in float64 and stored in their own dtype; integer tensors (BatchNorm's
    ``num_batches_tracked``) are taken from the last file. The files must hold the same tensor names
    and shapes: a ``ValueError`` names the file and the tensors that differ."""
    if len(paths) < 2:
        raise ValueError(f"average_checkpoints: give at least two checkpoints, got {paths}")
    states = [checkpoint_state_dict(path) for path in paths]
    first = states[0]
    for path, state in zip(paths[1:], states[1:]):
        missing, extra = sorted(set(first) - set(state)), sorted(set(state) - set(first))
        reshaped = sorted(k for k in set(first) & set(state) if first[k].shape != state[k].shape)
        if missing or extra or reshaped:
            raise ValueError(f"{path} is not a checkpoint of the model of {paths[0]}: missing {missing[:5]}, "
                             f"extra {extra[:5]}, other shapes {reshaped[:5]} (first 5 of each)")
    averaged = {}
    for key, value in first.items():
        if value.is_floating_point():
            averaged[key] = (sum(state[key].double() for state in states) / len(states)).to(value.dtype)
        else:
            averaged[key] = states[-1][key].clone()
    return averaged
