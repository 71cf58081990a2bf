"""Unit tests of detr_plus.engine: config overrides, device resolution, the training step (non-finite
loss), model EMA and its hook, optimizer parameter groups. No training of the real model here
(see test_training.py); the only real model built is the tiny one, for the parameter groups."""
import copy
import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import detr_plus  # noqa: F401  (compat shims before detectron2)
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import HookBase
from detectron2.utils.events import EventStorage

from detr_plus.engine.config import apply_overrides, resolve_device
from detr_plus.engine.ema import ModelEMA
from detr_plus.engine.hooks import EMAHook, first_lr_decay_iter, resolve_stop_update_iter
from detr_plus.engine.optim import NORM_TYPES, build_adamw, param_groups
from detr_plus.engine.trainer import DetrTrainer, NonFiniteLossError

pytestmark = pytest.mark.usefixtures("single_thread")


# ----------------------------------------------------------------------------------------------
# 4. LazyConfig overrides from the command line
# ----------------------------------------------------------------------------------------------
def test_command_line_overrides_are_applied(tiny):
    args = tiny.make_args("train.max_iter=7", "model.transformer.num_queries=20")
    assert args.opts == ["train.max_iter=7", "model.transformer.num_queries=20"]
    cfg = LazyConfig.load(args.config_file)
    assert cfg.train.max_iter != 7 and cfg.model.transformer.num_queries != 20
    cfg = apply_overrides(cfg, args.opts)
    assert cfg.train.max_iter == 7
    assert cfg.model.transformer.num_queries == 20


def test_unknown_override_key_raises_with_suggestion(tiny):
    cfg = LazyConfig.load(tiny.config)
    with pytest.raises(KeyError) as info:
        apply_overrides(cfg, ["train.max_iterz=3"])
    message = info.value.args[0]
    assert "'train.max_iterz'" in message
    assert "did you mean train.max_iter" in message
    assert "max_iterz" not in cfg.train  # nothing was applied
    with pytest.raises(KeyError, match="model.transformer.num_querie"):
        apply_overrides(cfg, ["model.transformer.num_querie=5"])
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(cfg, ["train.max_iter"])


def test_python_none_override_is_none_not_the_string(tiny):
    # Hydra's override grammar alone reads None as the string "None" (its null is "null").
    cfg = LazyConfig.load(tiny.config)
    assert cfg.model.criterion is not None
    raw = LazyConfig.apply_overrides(LazyConfig.load(tiny.config), ["model.criterion=None"])
    assert raw.model.criterion == "None"  # the trap this wrapper closes
    cfg = apply_overrides(cfg, ["model.criterion=None", "train.output_dir=None_dir", "+train.note=null"])
    assert cfg.model.criterion is None
    assert cfg.train.output_dir == "None_dir"  # only a whole value of None is Python's None
    assert cfg.train.note is None


def test_plus_prefix_adds_new_keys(tiny):
    cfg = LazyConfig.load(tiny.config)
    cfg = apply_overrides(cfg, ["+new.key=1", "+train.extra_flag=true", "train.max_iter=5"])
    assert cfg.new.key == 1
    assert cfg.train.extra_flag is True
    assert cfg.train.max_iter == 5


# ----------------------------------------------------------------------------------------------
# 10. Device
# ----------------------------------------------------------------------------------------------
def test_resolve_device(monkeypatch):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == expected
    assert resolve_device(None) == expected
    assert resolve_device("cpu") == "cpu"
    # With CUDA present, "auto" picks it but an explicit train.device=cpu is still respected.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"


def _record_model_moves(monkeypatch):
    """Where ``nn.Module.to`` is asked to move a module: the device of every call, in order. The
    module stays where it is (this host may have no GPU), so a "cuda" request is recorded, not done."""
    moves = []

    def to(self, *args, **kwargs):
        device = kwargs.get("device", args[0] if args else None)
        moves.append(torch.device(device).type if isinstance(device, (str, torch.device)) else device)
        return self

    monkeypatch.setattr(nn.Module, "to", to)
    return moves


def test_train_device_cpu_is_respected(tiny, train_net, monkeypatch):
    """With CUDA reported available (monkeypatched), ``train_net.build_model`` moves the model to the
    CPU when ``train.device=cpu`` and to CUDA when ``train.device=auto``: the device each call asked
    ``Module.to`` for, against the config's value."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    moves = _record_model_moves(monkeypatch)
    base = tiny.model_overrides + ["model.transformer.encoder.num_layers=1", "model.transformer.decoder.num_layers=1"]
    cfg = apply_overrides(LazyConfig.load(tiny.config), base + ["train.device=cpu"])
    model = train_net.build_model(cfg)
    assert moves == ["cpu"]
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    moves.clear()
    train_net.build_model(apply_overrides(LazyConfig.load(tiny.config), base + ["train.device=auto"]))
    assert moves == ["cuda"]  # "auto" with CUDA present: the GPU (recorded, not done)


# ----------------------------------------------------------------------------------------------
# 7. Non-finite loss
# ----------------------------------------------------------------------------------------------
class _LossModel(nn.Module):
    """Finite losses for ``finite_steps`` calls, then ``loss_a`` becomes NaN."""

    def __init__(self, finite_steps):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
        self.calls, self.finite_steps = 0, finite_steps

    def forward(self, batch):
        self.calls += 1
        loss_b = (self.weight ** 2).sum()
        loss_a = self.weight.sum() * (float("nan") if self.calls > self.finite_steps else 1.0)
        return {"loss_a": loss_a, "loss_b": loss_b}


def test_non_finite_loss_raises_and_keeps_weights():
    model = _LossModel(finite_steps=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = DetrTrainer(model, itertools.repeat([{}]), optimizer, clip_grad_norm=0.0, amp=False)
    snapshots = []

    class Snapshot(HookBase):  # the weights before each step
        def before_step(self):
            snapshots.append(model.weight.detach().clone())

    trainer.register_hooks([Snapshot()])
    with pytest.raises(NonFiniteLossError) as info:
        trainer.train(0, 10)
    message = str(info.value)
    assert "iteration 2" in message
    assert "loss_a" in message and "loss_b" not in message
    assert trainer.iter == 2 and len(snapshots) == 3
    assert not torch.equal(snapshots[0], snapshots[2])  # the two finite steps did train
    assert torch.equal(model.weight.detach(), snapshots[2])  # the NaN step changed nothing
    assert torch.isfinite(model.weight).all()


def test_amp_dtype_choice():
    from detr_plus.engine.trainer import resolve_amp_dtype

    assert resolve_amp_dtype("auto", "cpu") == torch.bfloat16
    assert resolve_amp_dtype("bfloat16", "cuda") == torch.bfloat16
    assert resolve_amp_dtype("float16", "cuda") == torch.float16
    with pytest.raises(ValueError, match="float16' needs CUDA"):
        resolve_amp_dtype("float16", "cpu")
    with pytest.raises(ValueError, match="train.amp.dtype='fp8'"):
        resolve_amp_dtype("fp8", "cuda")


def test_clip_grad_norm_and_amp_flag_on_cpu():
    model = _LossModel(finite_steps=100)
    trainer = DetrTrainer(model, itertools.repeat([{}]), torch.optim.SGD(model.parameters(), lr=0.1),
                          clip_grad_norm=0.1, amp=True)
    assert trainer.amp and trainer.amp_dtype == torch.bfloat16 and trainer.grad_scaler is None  # CPU: bfloat16, no scaler
    with EventStorage(0) as storage:
        trainer.storage = storage
        trainer.iter = 0
        trainer.run_step()
        # grad = (1 + 2w) = (3, -3, 7); its norm is logged before clipping, the step after it.
        assert storage.history("grad_norm").latest() == pytest.approx(math.sqrt(9 + 9 + 49), rel=1e-5)
        assert "total_loss" in storage.histories()
    step = torch.tensor([1.0, -2.0, 3.0]) - model.weight.detach()
    assert step.norm().item() == pytest.approx(0.1 * 0.1, rel=1e-4)  # lr x clipped grad norm


# ----------------------------------------------------------------------------------------------
# 8. EMA
# ----------------------------------------------------------------------------------------------
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.norm = nn.BatchNorm1d(2)  # float buffers are averaged too; num_batches_tracked (int) is not


def _set_weights(model, value):
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.dtype.is_floating_point:
                t.fill_(value)


def test_ema_update_matches_hand_computation():
    torch.manual_seed(0)
    model = _Net()
    old = {k: v.clone() for k, v in model.state_dict().items()}
    ema = ModelEMA(model, decay=0.9)
    assert "norm.num_batches_tracked" not in ema.shadow and "norm.running_mean" in ema.shadow
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        model.norm.running_mean.add_(1.0)
    new = model.state_dict()
    ema.update(model)
    assert ema.updates == 1
    for name in ema.names:
        torch.testing.assert_close(ema.shadow[name], 0.9 * old[name] + 0.1 * new[name], rtol=0, atol=1e-6)
    # The shadow is a copy: the model's own tensors are untouched by the update.
    torch.testing.assert_close(model.linear.weight.detach(), new["linear.weight"], rtol=0, atol=0)


def test_ema_warmup_decay():
    model = _Net()
    _set_weights(model, 0.0)
    ema = ModelEMA(model, decay=0.9, warmup_iters=10)
    assert ema.current_decay() == 0.0  # no update yet
    _set_weights(model, 1.0)
    ema.update(model)
    d1 = 0.9 * (1 - math.exp(-1 / 10))
    assert ema.current_decay() == pytest.approx(d1)
    torch.testing.assert_close(ema.shadow["linear.weight"], torch.full((2, 3), 1 - d1), rtol=0, atol=1e-6)
    for _ in range(99):
        ema.update(model)
    assert ema.updates == 100
    assert ema.current_decay() == pytest.approx(0.9 * (1 - math.exp(-10)))
    assert ModelEMA(model, decay=0.9, warmup_iters=0).current_decay() == 0.9


def test_ema_module_is_a_frozen_averaged_copy():
    """``ema.module`` is the model with the averaged weights: a separate copy, eval mode, no gradient;
    ``reset`` copies the model's current weights in (what ``train_net`` does after loading)."""
    model = _Net()
    _set_weights(model, 2.0)
    ema = ModelEMA(model, decay=0.5)
    _set_weights(model, 4.0)
    ema.update(model)  # 0.5 * 2 + 0.5 * 4
    teacher = ema.module
    assert teacher is not model and not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert torch.all(teacher.linear.weight == 3.0) and torch.all(teacher.norm.running_var == 3.0)
    assert torch.all(model.linear.weight == 4.0)  # the model is untouched
    assert ema.shadow["linear.weight"] is teacher.linear.weight  # the shadow is the module's own tensor
    _set_weights(model, 7.0)
    ema.reset(model)
    assert ema.updates == 0 and torch.all(teacher.linear.weight == 7.0) and torch.all(teacher.norm.running_mean == 7.0)
    model.train()
    assert not ema.module.training  # train() on the model does not reach the copy


def test_ema_hook_stops_updating():
    model = _Net()
    _set_weights(model, 0.0)
    ema = ModelEMA(model, decay=0.5)
    hook = EMAHook(ema, stop_update_iter=3)
    with EventStorage(0) as storage:
        hook.trainer = SimpleNamespace(model=model, storage=storage, iter=0)
        for it in range(6):
            hook.trainer.iter = it
            _set_weights(model, float(it + 1))
            hook.after_step()
            if it == 2:
                frozen = ema.shadow["linear.weight"].clone()
        assert len(storage.history("ema_decay").values()) == 3
    assert ema.updates == 3  # iterations 0, 1, 2; frozen from stop_update_iter=3 on
    expected = ((0 * 0.5 + 1 * 0.5) * 0.5 + 2 * 0.5) * 0.5 + 3 * 0.5
    assert torch.all(ema.shadow["linear.weight"] == expected)
    assert torch.equal(ema.shadow["linear.weight"], frozen)

    never = EMAHook(ModelEMA(model, decay=0.5), stop_update_iter=None)
    with EventStorage(0) as storage:
        never.trainer = SimpleNamespace(model=nn.DataParallel(model), storage=storage, iter=10 ** 6)
        never.after_step()  # unwraps .module
    assert never.ema.updates == 1


@pytest.mark.parametrize("max_iter, expected", [(1000, 900), (1500, 1350), (200, 180)])
def test_stop_update_at_the_first_lr_decay_follows_max_iter(tiny, max_iter, expected):
    """``stop_update_iter="first_lr_decay"`` is derived from the config's ``lr_multiplier`` at the run's
    ``train.max_iter`` (the tiny schedule drops at 90% of it, after a 50-iteration warm-up), and is the
    first iteration the LRScheduler hook trains at the decayed LR."""
    cfg = apply_overrides(LazyConfig.load(tiny.config), [f"train.max_iter={max_iter}"])
    multiplier = instantiate(cfg.lr_multiplier)
    assert first_lr_decay_iter(multiplier, max_iter) == expected
    assert resolve_stop_update_iter("first_lr_decay", multiplier, max_iter) == expected
    assert multiplier((expected - 1) / max_iter) == pytest.approx(1.0) and multiplier(expected / max_iter) == pytest.approx(0.1)
    assert resolve_stop_update_iter(123, multiplier, max_iter) == 123 and resolve_stop_update_iter(None, multiplier, max_iter) is None
    with pytest.raises(ValueError, match="stop_update_iter"):
        resolve_stop_update_iter("at_the_end", multiplier, max_iter)
    assert first_lr_decay_iter(lambda where: 1.0, 100) is None  # a constant LR never decays


def test_ema_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    model = _Net()
    ema = ModelEMA(model, decay=0.9)
    for _ in range(3):
        with torch.no_grad():
            model.linear.weight.add_(1.0)
        ema.update(model)
    torch.save({"ema": ema.state_dict()}, tmp_path / "ema.pth")

    other = ModelEMA(_Net(), decay=0.9)
    other.load_state_dict(torch.load(tmp_path / "ema.pth")["ema"])
    assert other.updates == 3
    assert other.shadow.keys() == ema.shadow.keys()
    for name in ema.names:
        assert torch.equal(other.shadow[name], ema.shadow[name])
    # The two EMAs continue identically.
    ema.update(model)
    other.update(model)
    assert torch.equal(other.shadow["linear.weight"], ema.shadow["linear.weight"])
    # A state lacking tensors is refused.
    state = ema.state_dict()
    state = dict(state, shadow={k: v for k, v in state["shadow"].items() if k != "linear.bias"})
    with pytest.raises(KeyError, match="linear.bias"):
        other.load_state_dict(state)


# ----------------------------------------------------------------------------------------------
# 9. Optimizer parameter groups
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(single_thread, tiny):
    torch.manual_seed(0)
    cfg = apply_overrides(LazyConfig.load(tiny.config), tiny.model_overrides)
    return instantiate(cfg.model)


def test_param_groups_with_default_lr_factors(tiny, tiny_model):
    common = LazyConfig.load(str(tiny.repo / "configs" / "common" / "optim.py")).AdamW
    lr_factors = dict(common.lr_factors)
    assert lr_factors == {"backbone": 0.1, "sampling_offsets": 0.1}
    base_lr, wd = common.lr, common.weight_decay
    groups = param_groups(tiny_model, base_lr, wd, lr_factors)

    # Every trainable parameter exactly once; one group per distinct (lr, weight decay).
    trainable = {id(p): n for n, p in tiny_model.named_parameters() if p.requires_grad}
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped)) == len(trainable)
    assert set(grouped) == set(trainable)
    settings = [(g["lr"], g["weight_decay"]) for g in groups]
    assert len(settings) == len(set(settings)) == 4  # {full, 0.1x} LR x {decay, no decay (norms, embeddings)}
    assert all(len(g["names"]) == len(g["params"]) for g in groups)

    by_name = {name: g for g in groups for name in g["names"]}
    assert set(by_name) == set(trainable.values())
    modules = dict(tiny_model.named_modules())
    seen = {"backbone": 0, "sampling_offsets": 0, "norm": 0}
    for name, g in by_name.items():
        if "backbone" in name or "sampling_offsets" in name:
            assert g["lr"] == pytest.approx(0.1 * base_lr), name
        else:
            assert g["lr"] == pytest.approx(base_lr), name
        module = modules[name.rsplit(".", 1)[0]]
        if isinstance(module, NORM_TYPES):
            assert g["weight_decay"] == 0.0, name
            seen["norm"] += 1
        elif isinstance(module, nn.Embedding):
            assert g["weight_decay"] == 0.0, name
        else:
            assert g["weight_decay"] == wd, name
        seen["backbone"] += "backbone" in name
        seen["sampling_offsets"] += "sampling_offsets" in name
    assert all(seen.values()), seen  # the model has backbone, sampling_offsets and norm parameters
    # Both LayerNorms (transformer) and BatchNorms (backbone) count as norms.
    norm_types = {type(modules[n.rsplit(".", 1)[0]]) for n in by_name if isinstance(modules[n.rsplit(".", 1)[0]], NORM_TYPES)}
    assert nn.LayerNorm in norm_types and any(issubclass(t, nn.modules.batchnorm._BatchNorm) for t in norm_types)

    # A frozen parameter is left out.
    first = next(tiny_model.parameters())
    first.requires_grad_(False)
    try:
        assert sum(len(g["params"]) for g in param_groups(tiny_model, base_lr, wd, lr_factors)) == len(trainable) - 1
    finally:
        first.requires_grad_(True)


def test_lr_factor_matching_no_parameter_is_an_error(tiny_model):
    """The two-stage ++ has no 2-d ``reference_points`` layer: asking for its factor is an error that
    names the fragment (it used to match nothing, silently)."""
    with pytest.raises(ValueError, match="reference_points"):
        param_groups(tiny_model, 1e-4, 1e-4, {"backbone": 0.1, "reference_points": 0.1})
    with pytest.raises(ValueError, match="backbone.stem"):  # shadowed by the earlier "backbone" fragment
        param_groups(tiny_model, 1e-4, 1e-4, {"backbone": 0.1, "backbone.stem": 0.5})


def test_build_adamw_from_config(tiny, tiny_model):
    common = LazyConfig.load(str(tiny.repo / "configs" / "common" / "optim.py")).AdamW
    common.model = tiny_model
    optimizer = instantiate(common)
    assert isinstance(optimizer, torch.optim.AdamW)
    lrs = {name: g["lr"] for g in optimizer.param_groups for name in g["names"]}
    name = next(n for n in lrs if "sampling_offsets" in n)
    assert lrs[name] == pytest.approx(0.1 * common.lr)
    assert optimizer.defaults["betas"] == (0.9, 0.999)
    # The tiny config's own factors: the backbone trains at the full LR there.
    tiny = build_adamw(tiny_model, lr=4e-4, lr_factors={"sampling_offsets": 0.1})
    lrs = {name: g["lr"] for g in tiny.param_groups for name in g["names"]}
    assert all(lr == pytest.approx(4e-4) for n, lr in lrs.items() if "backbone" in n)
    # One optimizer step over the merged groups equals AdamW stepped parameter by parameter.
    params = [p for p in tiny_model.parameters() if p.requires_grad][:6]
    grads = [torch.randn_like(p) for p in params]
    merged = torch.optim.AdamW([{"params": params, "lr": 1e-3, "weight_decay": 1e-4}])
    single = [torch.optim.AdamW([{"params": [p.detach().clone().requires_grad_()], "lr": 1e-3, "weight_decay": 1e-4}]) for p in params]
    for p, g in zip(params, grads):
        p.grad = g
    before = [p.detach().clone() for p in params]
    merged.step()
    for opt, g in zip(single, grads):
        opt.param_groups[0]["params"][0].grad = g
        opt.step()
    for p, b, opt in zip(params, before, single):
        torch.testing.assert_close(p.detach(), opt.param_groups[0]["params"][0].detach(), rtol=0, atol=1e-7)
        with torch.no_grad():
            p.copy_(b)


def test_build_adamw_fused_on_cpu_and_same_update(tiny_model):
    """fused=None picks torch's fused AdamW for CPU float parameters; three steps of it equal the
    plain (for-loop) AdamW's within float rounding, and a plain optimizer's state loads into it."""
    fused = build_adamw(tiny_model, lr=1e-3, lr_factors={"sampling_offsets": 0.1})
    assert all(g["fused"] for g in fused.param_groups)
    plain_model = copy.deepcopy(tiny_model)
    plain = build_adamw(plain_model, lr=1e-3, lr_factors={"sampling_offsets": 0.1}, fused=False)
    assert not any(g["fused"] for g in plain.param_groups)
    gen = torch.Generator().manual_seed(0)
    params = [p for p in tiny_model.parameters() if p.requires_grad]
    plain_params = [p for p in plain_model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    for _ in range(3):
        for p, q in zip(params, plain_params):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        fused.step()
        plain.step()
    assert max((p - b).abs().max() for p, b in zip(params, before)) > 1e-4  # the steps moved the weights
    for p, q in zip(params, plain_params):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)
    fused.load_state_dict(plain.state_dict())
    assert fused.state_dict()["state"].keys() == plain.state_dict()["state"].keys()


# ----------------------------------------------------------------------------------------------
# train.init_only: one module of another detector's checkpoint as the initialisation
# ----------------------------------------------------------------------------------------------
def test_init_only_loads_the_backbone_of_another_detector(tmp_path):
    """A Deformable-DETR++ checkpoint's backbone into a Conditional DETR: every backbone tensor
    (BatchNorm statistics included) is the checkpoint's, every other tensor keeps the model's own
    init; a checkpoint without the module, or with another backbone width, names the file."""
    from model_utils import build, build_tiny_model, shrink_model_config, REPO

    from detr_plus.engine.checkpoint import load_modules

    source = build_tiny_model("plusplus", seed=0)
    with torch.no_grad():
        for buffer in source.backbone.buffers():
            buffer.add_(1)  # the statistics of a trained backbone, not the init's
    path = tmp_path / "plusplus.pth"
    torch.save({"model": source.state_dict()}, path)
    target = build(shrink_model_config(LazyConfig.load(str(REPO / "configs/models/conditional_detr_r50.py")).model), seed=1)
    before = copy.deepcopy(target.state_dict())
    assert load_modules(target, str(path), ["backbone"]) == len(source.backbone.state_dict())
    theirs = source.state_dict()
    for key, value in target.state_dict().items():
        expected = theirs[key] if key.startswith("backbone.") else before[key]
        assert torch.equal(value, expected), key
    assert not torch.equal(target.backbone.stem.conv1.weight, before["backbone.stem.conv1.weight"])

    torch.save({"model": {k: v for k, v in theirs.items() if not k.startswith("backbone.")}}, tmp_path / "headless.pth")
    lacking = f"lacks {len(source.backbone.state_dict())} of the model's tensors under these names"
    with pytest.raises(ValueError, match=rf"train.init_only=\['backbone'\]: checkpoint '.*headless.pth' {lacking}"):
        load_modules(target, str(tmp_path / "headless.pth"), ["backbone"])
    wide = {k: (torch.zeros(v.shape[0] * 2, *v.shape[1:]) if k == "backbone.stem.conv1.weight" else v) for k, v in theirs.items()}
    torch.save({"model": wide}, tmp_path / "wide.pth")
    with pytest.raises(ValueError, match=r"wide.pth' does not match the config: 1 tensor\(s\) differ:\n  backbone.stem.conv1.weight: checkpoint \(64, 3, 7, 7\), model \(32, 3, 7, 7\)"):
        load_modules(target, str(tmp_path / "wide.pth"), ["backbone"])
    with pytest.raises(ValueError, match=r"train.init_checkpoint '.*absent.pth' is not a local file \(train the model"):
        load_modules(target, str(tmp_path / "absent.pth"), ["backbone"])
    with pytest.raises(ValueError, match=r"train.init_only=\['backbon'\]: the model has no module 'backbon'"):
        load_modules(target, str(path), ["backbon"])
