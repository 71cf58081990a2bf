"""timm backbones as Detectron2 backbones (issue #31): output names, shapes and strides into the
neck, weights from a local file (no download), a training step through Swin, and the Swin-L / R101
configs' parameter counts (built on the meta device: no memory, no weights)."""
import importlib.util

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
    ("configs/dino/dino_swin_base_384_4scale_12ep.py", 107.49, 86.88),
    ("configs/dino/dino_swin_small_224_4scale_12ep.py", 68.74, 48.84),
    ("configs/dino/dino_swin_tiny_224_4scale_12ep.py", 47.42, 27.52),
    ("configs/dino/dino_r101_4scale_12ep.py", 65.82, 42.39),
    ("configs/deformable_detr/deformable_detr_plusplus_r101_12ep.py", 66.62, 42.39),
    ("projects/od_detr/configs/od_dino_swin_large_384_4scale_12ep.py", 217.22, 195.20),
])
def test_parameter_counts_of_the_bigger_backbones(config, total, backbone):
    """Millions of parameters (README, "Bigger backbones"): Swin-L's 195.20 M are the Swin paper's 197 M
    less its 1000-class head (1536 x 1000 + 1000 = 1.54 M); Swin-B 86.88 M = 87.9 M - 1.03 M, Swin-S
    48.84 M = 49.6 M - 0.77 M, Swin-T 27.52 M = 28.3 M - 0.77 M (the Swin paper's sizes with heads)."""
    cfg = LazyConfig.load(str(REPO / config))
    with torch.device("meta"):
        model = instantiate(cfg.model)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(total, abs=0.005)
    assert sum(p.numel() for p in model.backbone.parameters()) / 1e6 == pytest.approx(backbone, abs=0.005)


def test_grad_checkpointing_of_the_stages_leaves_outputs_and_gradients_equal():
    """``grad_checkpointing=True`` (timm's checkpointing of each stage): the same features and the same
    gradients of every Swin-T parameter as without it, and the stages' blocks really run again in the
    backward pass (a forward hook on a stage-3 block counts 2 calls instead of 1; timm leaves the first
    and the last module, patch embedding and stage 4, unchecked)."""
    torch.manual_seed(3)
    plain = TimmBackbone("swin_tiny_patch4_window7_224").train()
    checkpointed = TimmBackbone("swin_tiny_patch4_window7_224", grad_checkpointing=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    image = torch.randn(1, 3, 96, 128)
    grads, outputs, calls = [], [], []
    for backbone in (plain, checkpointed):
        block = backbone.model.layers_2.blocks[1]
        count = [0]
        handle = block.register_forward_hook(lambda *_, count=count: count.__setitem__(0, count[0] + 1))
        torch.manual_seed(4)  # the same stochastic depth (timm's Swin default 0.1): the recomputation replays it
        out = backbone(image)
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in out.values()).backward()
        handle.remove()
        outputs.append(out)
        calls.append(count[0])
        grads.append({n: p.grad for n, p in backbone.named_parameters()})
    assert calls == [1, 2]
    for key in outputs[0]:
        torch.testing.assert_close(outputs[1][key], outputs[0][key], rtol=0, atol=0)
    assert grads[0].keys() == grads[1].keys() and all(g is not None for g in grads[0].values())
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6, msg=name)


def test_swin_sizes_set_their_timm_model_and_stochastic_depth():
    for size, name, rate in [("tiny", "swin_tiny_patch4_window7_224", 0.2), ("small", "swin_small_patch4_window7_224", 0.3),
                             ("base", "swin_base_patch4_window12_384", 0.3), ("large", "swin_large_patch4_window12_384", 0.2)]:
        cfg = LazyConfig.load(str(REPO / f"configs/dino/dino_swin_{size}_{name[-3:]}_4scale_12ep.py"))
        assert (cfg.model.backbone.model_name, cfg.model.backbone.drop_path_rate, cfg.train.init_checkpoint) == (name, rate, "")
        assert cfg.model.backbone.grad_checkpointing is False  # declared: the override needs no "+"
        assert cfg.model.size_divisibility == 32  # DINO's R50 pads to nothing; Swin needs a multiple of its patch
    spec = importlib.util.spec_from_file_location("backbones", REPO / "configs/common/backbones.py")
    backbones = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(backbones)
    cfg = LazyConfig.load(str(REPO / "configs/dino/dino_r50_4scale_12ep.py"))
    with pytest.raises(ValueError, match="size 'huge' is not one of"):
        backbones.use_swin(cfg.model, cfg.train, "huge")
