"""Backbone wiring: any detectron2 ``Backbone`` plus a multi-scale channel-mapper neck."""
from typing import Dict, List

from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock, ResNet
from torch import nn


def resnet_stages(depth=50, base_channels=64, norm="FrozenBN", stride_in_1x1=False):
    """``ResNet.make_default_stages`` with a configurable width (``base_channels``), so small CPU
    configs can use a thin ResNet-18. ``base_channels=64`` gives the standard ResNets."""
    blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
    basic = depth < 50
    in_channels, out_channels = base_channels, base_channels if basic else base_channels * 4
    stages = []
    for index, num_blocks in enumerate(blocks):
        kwargs = dict(block_class=BasicBlock if basic else BottleneckBlock, num_blocks=num_blocks,
                      in_channels=in_channels, out_channels=out_channels, norm=norm)
        if not basic:
            kwargs.update(bottleneck_channels=out_channels // 4, stride_in_1x1=stride_in_1x1)
        # detectron2 v0.6's make_stage takes per-block strides as "stride_per_block".
        kwargs["stride_per_block"] = [1 if index == 0 else 2] + [1] * (num_blocks - 1)
        stages.append(ResNet.make_stage(**kwargs))
        in_channels, out_channels = out_channels, out_channels * 2
    return stages


class ChannelMapper(nn.Module):
    """Maps backbone levels to ``out_channels`` (1x1 conv + GroupNorm) and adds extra levels with
    stride-2 3x3 convs on the last input, as Deformable DETR's input projection (Sec. 4.1);
    ``num_groups=0``: without the GroupNorm."""

    def __init__(self, input_shapes: Dict[str, ShapeSpec], in_features: List[str], out_channels=256, num_outs=4, num_groups=32):
        super().__init__()
        missing = [f for f in in_features if f not in input_shapes]
        if missing:
            raise ValueError(f"neck.in_features {missing} are not backbone outputs {list(input_shapes)}")
        self.in_features = list(in_features)
        def norm():  # num_groups=0: no norm (Conditional / DAB-DETR's plain 1x1 input projection)
            return nn.GroupNorm(num_groups, out_channels) if num_groups else nn.Identity()

        self.convs = nn.ModuleList(nn.Sequential(nn.Conv2d(input_shapes[f].channels, out_channels, 1), norm()) for f in in_features)
        extra, channels = [], input_shapes[in_features[-1]].channels
        for _ in range(num_outs - len(in_features)):
            extra.append(nn.Sequential(nn.Conv2d(channels, out_channels, 3, stride=2, padding=1), norm()))
            channels = out_channels
        self.extra_convs = nn.ModuleList(extra)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight, gain=1)
                nn.init.zeros_(module.bias)

    def forward(self, features: Dict[str, "torch.Tensor"]):
        outs = [conv(features[f]) for f, conv in zip(self.in_features, self.convs)]
        last = features[self.in_features[-1]]
        for conv in self.extra_convs:
            last = conv(last)
            outs.append(last)
        return outs
