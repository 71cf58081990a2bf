"""timm backbones as Detectron2 backbones (issue #31): output names, shapes and strides into the
neck, weights from a local file (no download), a training step through Swin, and the Swin-L / R101
configs' parameter counts (built on the meta device: no memory, no weights)."""
import pytest
import torch

pytest.importorskip("timm")
import timm  # noqa: E402
from detectron2.config import LazyConfig, instantiate  # noqa: E402

from detr_plus.modeling.timm_backbone import TimmBackbone, timm_feature_shapes, use_timm_backbone  # noqa: E402
from model_utils import REPO, shrink_model_config, synthetic_batch  # noqa: E402


@pytest.mark.parametrize("name, channels", [("swin_tiny_patch4_window7_224", (192, 384, 768)), ("convnext_atto", (80, 160, 320))])
def test_outputs_are_named_by_stride_channels_first(name, channels):
    """A 128 x 160 image: res3 / res4 / res5 at strides 8 / 16 / 32 (16 x 20, 8 x 10, 4 x 5), channels
    first (timm's Swin gives channels last), as ``output_shape`` says."""
    backbone = TimmBackbone(name, out_features=["res3", "res4", "res5"]).eval()
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, 128, 160))
    assert list(out) == ["res3", "res4", "res5"]
    for (key, value), c, (h, w), stride in zip(out.items(), channels, [(16, 20), (8, 10), (4, 5)], (8, 16, 32)):
        assert tuple(value.shape) == (2, c, h, w), key
        assert backbone.output_shape()[key].channels == c and backbone.output_shape()[key].stride == stride
    assert timm_feature_shapes(name)["res2"].stride == 4


def test_unknown_outputs_are_named_in_the_error():
    with pytest.raises(ValueError, match=r"out_features \['res6'\] are not among its stages \['res2', 'res3', 'res4', 'res5'\]"):
        TimmBackbone("convnext_atto", out_features=["res5", "res6"])


def test_weights_from_a_local_file_of_the_classification_model(tmp_path):
    """The file of timm's classification model (head included) loads into the feature model: the stem
    and a late block equal the file's tensors; without weights they differ."""
    torch.manual_seed(5)
    classifier = timm.create_model("convnext_atto", pretrained=False)
    path = tmp_path / "convnext_atto.pth"
    torch.save(classifier.state_dict(), path)
    loaded = TimmBackbone("convnext_atto", weights=str(path)).model.state_dict()
    source = classifier.state_dict()
    for key in ("stem_0.weight", "stages_3.blocks.1.mlp.fc2.weight"):  # timm's feature model names stem.0 "stem_0"
        assert torch.equal(loaded[key], source[key.replace("_", ".", 1)]), key
    assert not torch.equal(TimmBackbone("convnext_atto").model.state_dict()["stages_3.blocks.1.mlp.fc2.weight"],
                           loaded["stages_3.blocks.1.mlp.fc2.weight"])


def test_a_training_step_through_swin_into_the_neck():
    """The shapes tiny model with Swin-T's res3-res5 in place of its ResNet: the neck takes Swin's
    channels, the losses are finite and the gradient reaches the first Swin stage."""
    cfg = LazyConfig.load(str(REPO / "configs/shapes/deformable_detr_tiny.py"))
    model_cfg = shrink_model_config(cfg.model)
    use_timm_backbone(model_cfg, "swin_tiny_patch4_window7_224", out_features=["res3", "res4", "res5"])
    assert [model_cfg.neck.input_shapes[k].channels for k in ("res3", "res4", "res5")] == [192, 384, 768]
    torch.manual_seed(0)
    model = instantiate(model_cfg).train()
    losses = model(synthetic_batch(sizes=[(96, 128), (128, 96)]))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    patch_embed = next(p for n, p in model.backbone.named_parameters() if "patch_embed" in n)
    assert patch_embed.grad is not None and patch_embed.grad.abs().sum() > 0


@pytest.mark.parametrize("config, total, backbone", [
    ("configs/dino/dino_swin_large_384_4scale_12ep.py", 217.22, 195.20),
    ("configs/dino/dino_r101_4scale_12ep.py", 65.82, 42.39),
    ("configs/deformable_detr/deformable_detr_plusplus_r101_12ep.py", 66.62, 42.39),
    ("projects/od_detr/configs/od_dino_swin_large_384_4scale_12ep.py", 217.22, 195.20),
])
def test_parameter_counts_of_the_bigger_backbones(config, total, backbone):
    """Millions of parameters (README, "Bigger backbones"): Swin-L's 195.20 M are the Swin paper's 197 M
    less its 1000-class head (1536 x 1000 + 1000 = 1.54 M)."""
    cfg = LazyConfig.load(str(REPO / config))
    with torch.device("meta"):
        model = instantiate(cfg.model)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(total, abs=0.005)
    assert sum(p.numel() for p in model.backbone.parameters()) / 1e6 == pytest.approx(backbone, abs=0.005)
