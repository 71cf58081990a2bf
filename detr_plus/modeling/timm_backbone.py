"""timm models (Swin, ConvNeXt, ...) as Detectron2 backbones, for the papers' Swin-L rows.

``TimmBackbone`` runs a timm model's feature stages (``features_only``) and names each output by its
stride as Detectron2's ResNet does (stride 4 -> "res2", 8 -> "res3", 16 -> "res4", 32 -> "res5"),
so the same ``ChannelMapper`` neck takes them. Swin's outputs are channels-last in timm and are
returned channels-first. ``use_timm_backbone`` swaps it into a LazyConfig model, the neck's input
channels included.

Weights: ``weights=""`` leaves timm's random initialisation (the tests; no download), a path loads
that file of the classification model through timm (its own key filtering for ``features_only``),
``"timm"`` asks timm for its pretrained weights (its cache, else a download).
"""
import math
from typing import Dict, List, Sequence

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone


def _create(model_name: str, weights: str = "", **kwargs):
    import timm

    if weights and weights != "timm":
        kwargs["pretrained_cfg_overlay"] = dict(file=weights)
    if model_name.startswith("swin"):
        kwargs.setdefault("strict_img_size", False)  # any image size that is a multiple of 32
    return timm.create_model(model_name, pretrained=bool(weights), features_only=True, **kwargs)


def feature_names(reductions: Sequence[int]) -> List[str]:
    """Detectron2's names of outputs at these strides: stride 2^k -> "res{k}"."""
    return [f"res{int(round(math.log2(r)))}" for r in reductions]


def timm_feature_shapes(model_name: str, **kwargs) -> Dict[str, ShapeSpec]:
    """{name: ShapeSpec(channels, stride)} of every feature stage of ``model_name``, read from a
    model built on the meta device (no memory, no weights: cheap even for Swin-L)."""
    with torch.device("meta"):
        model = _create(model_name, **kwargs)
    info = model.feature_info
    return {name: ShapeSpec(channels=c, stride=r) for name, c, r in zip(feature_names(info.reduction()), info.channels(), info.reduction())}


class TimmBackbone(Backbone):
    """``timm.create_model(model_name, features_only=True)`` with outputs ``out_features`` (names by
    stride, see the module docstring). ``drop_path_rate`` and other timm arguments pass through.
    ``grad_checkpointing``: timm's own activation checkpointing of the stages (recomputed in the
    backward pass): the backbone's share of the memory, which ``checkpoint_layers`` of the encoder and
    decoder leave (most of it for Swin-L)."""

    def __init__(self, model_name: str, out_features: Sequence[str] = ("res3", "res4", "res5"), weights: str = "",
                 grad_checkpointing: bool = False, **kwargs):
        super().__init__()
        self.model = _create(model_name, weights, **kwargs)
        self.model.set_grad_checkpointing(grad_checkpointing)
        info = self.model.feature_info
        names = feature_names(info.reduction())
        unknown = sorted(set(out_features) - set(names))
        if unknown:
            raise ValueError(f"TimmBackbone({model_name!r}): out_features {unknown} are not among its stages {names}")
        self._out_features = list(out_features)
        self._index = {name: i for i, name in enumerate(names)}
        self._out_feature_channels = dict(zip(names, info.channels()))
        self._out_feature_strides = dict(zip(names, info.reduction()))
        fmt = getattr(self.model, "output_fmt", "NCHW")
        self.channels_last = getattr(fmt, "value", fmt) == "NHWC"

    @property
    def size_divisibility(self) -> int:
        return 32

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        outputs = self.model(x)
        if self.channels_last:
            outputs = [o.permute(0, 3, 1, 2) for o in outputs]
        return {name: outputs[self._index[name]].contiguous() for name in self._out_features}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
                for name in self._out_features}


def use_timm_backbone(model, model_name: str, out_features: Sequence[str] = None, weights: str = "", **kwargs):
    """In a LazyConfig ``model`` (backbone + ChannelMapper neck): the backbone becomes
    ``TimmBackbone(model_name)`` with the neck's ``in_features`` (or ``out_features``) and the neck's
    input channels those of the timm model; the batch is padded to a multiple of 32 at least."""
    from detectron2.config import LazyCall as L

    out_features = list(out_features or model.neck.in_features)
    shapes = timm_feature_shapes(model_name, **kwargs)
    model.backbone = L(TimmBackbone)(model_name=model_name, out_features=out_features, weights=weights,
                                     grad_checkpointing=False, **kwargs)
    # timm's Swin takes any size that is a multiple of its patch (4) and pads its windows itself; ConvNeXt
    # and the rest any multiple of their stride: padding the batch to 32 serves every model (DINO's R50
    # configs pad to nothing, as the official code)
    model.size_divisibility = max(model.get("size_divisibility", 0) or 0, 32)
    model.neck.in_features = out_features
    model.neck.input_shapes = {name: L(ShapeSpec)(channels=shapes[name].channels) for name in out_features}
    return model
