"""QR-DETR on the shared core (issue #10, "What must be shown"): each wrapper against its equation on a
hand-built case (a per-image reference with plain indexing), all-pass routing equals the plain
decoder exactly, all-bypass EEQR_F is the identity, the router learns through the exit heads,
concatenation vs scattering, routing statistics, configs, and --eval-only of a QR checkpoint."""
import copy
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import detr_plus  # noqa: F401  (detectron2 compatibility patches)
from detectron2.config import LazyConfig, instantiate

from detr_plus.engine.config import apply_overrides
from detr_plus.modeling import (PRIMARY, strip_training_parts, DecoderQueries, DeformableDecoder, DeformableDecoderLayer, EncoderState, LayerInputs,
                                 OwnFFNVariant, QueryStream, QuerySubset, Stream)
from detr_plus_projects.qr_detr.modeling import EEQRLayer, EEQRWrapper, evaluate_routing, plot_routing, summary
from model_utils import SMALL_IMAGE_SIZES, assert_inference_without_training_parts, synthetic_batch  # tests/model_utils.py (pytest.ini: pythonpath = tests)

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "projects" / "qr_detr" / "configs"
TINY = CONFIGS / "qr_detr_shapes_tiny.py"
SMALL = ["model.transformer.encoder.num_layers=1", "model.transformer.num_queries=20"]

D = 16


def random_state(seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = torch.tensor([[6, 5], [3, 3]])
    start = torch.tensor([0, 30])
    memory = torch.randn(2, 39, D, generator=gen)
    return EncoderState(memory, shapes, start, torch.tensor([[[1.0, 1.0]] * 2, [[0.8, 0.9]] * 2]), torch.zeros(2, 39, dtype=torch.bool))


def plain_layer(seed=0):
    torch.manual_seed(seed)
    layer = DeformableDecoderLayer(d_model=D, d_ffn=32, dropout=0.0, num_heads=2, num_levels=2, num_points=2)
    return layer.eval()


def inputs(seed=1, num=6):
    """Queries whose feature 0 decides the routing below (>= 0: pass): image 0 passes 0, 2, 3;
    image 1 passes only 4 (unequal counts: padding in image 1)."""
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(2, num, D, generator=gen)
    signs = torch.tensor([[1, -1, 1, 1, -1, -1], [-1, -1, -1, -1, 1, -1]], dtype=torch.float32)
    query[..., 0] = signs * (query[..., 0].abs() + 0.1)
    boxes = torch.cat([torch.rand(2, num, 2, generator=gen) * 0.6 + 0.2, torch.rand(2, num, 2, generator=gen) * 0.3 + 0.05], -1)
    position = torch.randn(2, num, D, generator=gen)
    return query, boxes, position, signs > 0


CONTEXTS = DeformableDecoder(num_layers=1, d_model=D, num_classes=3, query_position="static", num_heads=2, num_levels=2, d_ffn=32)


def context_for(boxes, position, state):
    """The layer's context for (boxes, static position), built as the decoder builds it."""
    return CONTEXTS.context_of(QueryStream(None, boxes, boxes, position), state)


def image_state(state, b):
    return EncoderState(state.memory[b : b + 1], state.spatial_shapes, state.level_start_index, state.valid_ratios[b : b + 1],
                        state.padding_mask[b : b + 1])


def routed(layer, mode, **kwargs):
    wrapper = EEQRLayer(copy.deepcopy(layer), mode, D, **kwargs).eval()
    with torch.no_grad():  # pass iff query[..., 0] >= 0: scores (q0, 0)
        wrapper.router.weight.zero_()
        wrapper.router.bias.zero_()
        wrapper.router.weight[0, 0] = 1.0
    return wrapper


def call(layer, query, context):
    """A decoder layer (or wrapper) on the primary stream alone: ``layer(LayerInputs(...))``."""
    return layer(LayerInputs({PRIMARY: Stream(query, context)}))


def whole_layer(wrapper):
    """EEQR_F's routed block: the wrapped layer's blocks it routes as one segment (SA -> CA (-> FFN))."""
    is_routed, blocks, _ = wrapper.segments(wrapper.layer.blocks_for(None))[0]
    assert is_routed and wrapper.mode == "F"
    return blocks


def per_image(passes):
    """(image, its passing queries' indices): the reference processes each image's passing queries
    alone, with plain indexing and no padding."""
    return [(b, passes[b].nonzero().flatten()) for b in range(passes.shape[0])]


def test_router_decision_and_exit_score_by_hand():
    """Eq. 5-6 on two hand-made queries: the router's scores (s_pass, s_bypass) = (2, -2) and
    (-0.5, 0.5); a query passes iff s_pass >= s_bypass, and sigma_EE is the larger of the two
    sigmoids: sigmoid(2) = 0.880797 and sigmoid(0.5) = 0.622459 (their mean would be 0.5 for both)."""
    wrapper = routed(plain_layer(), "F")
    with torch.no_grad():
        wrapper.router.weight[1, 0] = -1.0  # scores (q0, -q0)
    query = torch.zeros(1, 2, D)
    query[0, 0, 0], query[0, 1, 0] = 2.0, -0.5
    with torch.no_grad():
        wrapper.router.bias.copy_(torch.tensor([0.0, 0.0]))
        passes, sigma = wrapper.route(query)
    assert passes.tolist() == [[True, False]]
    torch.testing.assert_close(sigma, torch.tensor([[0.880797, 0.622459]]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["SA", "CA", "F"])
def test_each_wrapper_matches_its_equation(mode):
    """Eq. 9 (SA), Eq. 10 (CA), Eq. 11 (F), each with the FFN on the routed queries (Sec. 5.4 c)."""
    layer, state = plain_layer(), random_state()
    query, boxes, position, passes = inputs()
    context = context_for(boxes, position, state)
    wrapper = routed(layer, mode)
    with torch.no_grad():
        out = call(wrapper, query, context)
        expected = query.clone()
        if mode == "CA":
            expected = layer.self_attn(query, context)  # every query through SA
        for b, idx in per_image(passes):
            one = context_for(boxes[b : b + 1, idx], position[b : b + 1, idx], image_state(state, b))
            q = query[b : b + 1, idx] if mode != "CA" else expected[b : b + 1, idx]
            if mode == "SA":
                expected[b, idx] = layer.self_attn(q, one)[0]
            elif mode == "CA":
                expected[b, idx] = layer.cross_attn(q, one)[0]
            else:
                expected[b, idx] = layer.ffn(layer.cross_attn(layer.self_attn(q, one), one), one)[0]
        if mode == "SA":
            expected = layer.cross_attn(expected, context)  # then every query through CA
        if mode != "F":
            for b, idx in per_image(passes):
                expected[b, idx] = layer.ffn(expected[b, idx][None])[0]
    torch.testing.assert_close(out.hidden, expected, rtol=0, atol=1e-5)
    assert wrapper.last_passed.tolist() == [3, 1]
    if mode == "F":
        assert torch.equal(out.updated, passes)
        torch.testing.assert_close(out.hidden[~passes], query[~passes], rtol=0, atol=0)  # bypassed: unchanged
    else:
        assert out.updated is None
    # FFN on all queries (the printed Eq. 9-11): the bypassed ones get the FFN too.
    all_ffn = routed(layer, mode, ffn_on="all")
    with torch.no_grad():
        got = call(all_ffn, query, context).hidden
    assert (got[~passes] - out.hidden[~passes]).abs().max() > 1e-4


def test_all_pass_routing_equals_the_plain_decoder_exactly():
    cfg = apply_overrides(LazyConfig.load(str(TINY)), SMALL + ["model.transformer.decoder.layer_wrapper.start=pass"])
    torch.manual_seed(0)
    qr = instantiate(cfg.model).eval()
    base_cfg = apply_overrides(LazyConfig.load(str(REPO / "configs" / "shapes" / "deformable_detr_plain_tiny.py")), SMALL)
    base = instantiate(base_cfg.model).eval()
    state = {re.sub(r"decoder\.layers\.(\d+)\.layer\.", r"decoder.layers.\1.", k): v
             for k, v in strip_training_parts(qr.state_dict()).items() if ".router." not in k}
    base.load_state_dict(state, strict=True)
    batch = synthetic_batch(sizes=SMALL_IMAGE_SIZES)
    with torch.no_grad():
        _, s, sel = qr.encode_and_select(batch)
        a = qr.transformer.decode(sel.queries, s)
        b = base.transformer.decode(sel.queries, s)
    for x, y in zip(a.layers, b.layers):
        for field in ("hidden", "logits", "boxes", "reference"):
            assert torch.equal(getattr(x, field), getattr(y, field)), field
    assert [layer.last_passed.tolist() for layer in qr.transformer.decoder.layers] == [[20, 20]] * 3


def test_all_bypass_eeqr_f_is_the_identity_on_that_layer():
    state = random_state()
    query, boxes, position, _ = inputs()
    decoder = DeformableDecoder(num_layers=2, d_model=D, num_classes=3, query_position="static", num_heads=2, num_levels=2, d_ffn=32,
                                layer_wrapper=EEQRWrapper(D, scheme=["F", None], start="bypass"))
    with torch.no_grad():
        for head in decoder.box_heads:  # non-zero box heads, so a refinement would move the boxes
            head.layers[-1].weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
        out = decoder.eval()(DecoderQueries(query, boxes, position), state)
    first = out.layers[0]
    assert not first.updated.any()
    torch.testing.assert_close(first.hidden, query, rtol=0, atol=0)
    torch.testing.assert_close(first.boxes, boxes, rtol=0, atol=0)
    torch.testing.assert_close(out.layers[1].reference, boxes, rtol=0, atol=0)  # the next layer starts from the kept boxes
    assert decoder.layers[0].last_passed.tolist() == [0, 0]


def test_router_learns_through_the_exit_heads_only():
    """The pass/bypass decision carries no gradient; sigma_EE does, through the exit heads' set loss."""
    cfg = apply_overrides(LazyConfig.load(str(TINY)), SMALL)
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    losses, matching = model.training_losses(synthetic_batch(sizes=SMALL_IMAGE_SIZES))
    assert {f"exit/loss_{t}_{i}" for t in ("class", "bbox", "giou") for i in range(3)} <= set(losses) and len(matching["exit"]) == 3
    routers = [layer.router.weight for layer in model.transformer.decoder.layers]
    primary = sum(v for k, v in losses.items() if "/" not in k)
    exits = sum(v for k, v in losses.items() if k.startswith("exit/"))
    assert all(g is None for g in torch.autograd.grad(primary, routers, retain_graph=True, allow_unused=True))
    assert all(g is not None and g.abs().sum() > 0 for g in torch.autograd.grad(exits, routers))
    model.eval()  # no exit predictions at inference
    with torch.no_grad():
        _, s, sel = model.encode_and_select(synthetic_batch(with_instances=False, sizes=SMALL_IMAGE_SIZES))
        out = model.transformer.decode(sel.queries, s)
    assert all("exit" not in layer.extras for layer in out.layers)


def test_concatenation_moves_the_processed_queries_first():
    layer, state = plain_layer(), random_state()
    query, boxes, position, passes = inputs()
    context = context_for(boxes, position, state)
    scatter, concat = routed(layer, "F"), routed(layer, "F", regroup="concat")
    with torch.no_grad():
        a, b = call(scatter, query, context), call(concat, query, context)
    for img in range(2):
        order = torch.cat([passes[img].nonzero().flatten(), (~passes[img]).nonzero().flatten()])
        torch.testing.assert_close(b.hidden[img], a.hidden[img, order], rtol=0, atol=0)
    assert b.updated is None


@pytest.mark.parametrize("mode", ["SA", "CA"])
def test_concatenation_feeds_the_ffn_the_processed_queries(mode):
    """#27 item 8: with concatenation the routed block's outputs move to the front, so the routed
    FFN after SA / CA must take those first rows (it took the original positions before)."""
    layer, state = plain_layer(), random_state()
    query, boxes, position, passes = inputs()
    context = context_for(boxes, position, state)
    wrapper = routed(layer, mode, regroup="concat")
    with torch.no_grad():
        out = call(wrapper, query, context).hidden
        expected = query.clone() if mode == "SA" else layer.self_attn(query, context)
        for b, idx in per_image(passes):
            one = context_for(boxes[b : b + 1, idx], position[b : b + 1, idx], image_state(state, b))
            block = layer.self_attn if mode == "SA" else layer.cross_attn
            expected[b, idx] = block(expected[b : b + 1, idx], one)[0]
        order = torch.stack([torch.cat([p.nonzero().flatten(), (~p).nonzero().flatten()]) for p in passes])
        expected = expected.gather(1, order[..., None].expand_as(expected))  # processed first: they leave their positions
        if mode == "SA":
            expected = layer.cross_attn(expected, context)  # every query, at the positions of its new row
        counts = passes.sum(1).tolist()
        for b, k in enumerate(counts):
            expected[b, :k] = layer.ffn(expected[b : b + 1, :k])[0]  # the FFN on the processed (now first) rows
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_routing_statistics_and_png(tmp_path):
    cfg = apply_overrides(LazyConfig.load(str(TINY)), SMALL)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    counts = evaluate_routing(model, [synthetic_batch(with_instances=False, sizes=SMALL_IMAGE_SIZES)] * 2)
    assert sorted(counts) == ["layer0_F", "layer1_SA", "layer2_CA"] and all(len(v) == 4 for v in counts.values())
    assert counts["layer0_F"] == model.transformer.decoder.layers[0].last_passed.tolist() * 2
    means = summary(counts)
    assert means["layer1_SA"] == pytest.approx(sum(counts["layer1_SA"]) / 4)
    png = plot_routing(counts, 20, str(tmp_path / "routing.png"))
    assert Path(png).stat().st_size > 1000


@pytest.mark.parametrize("name, scheme, regroup, ffn_on", [
    ("qr_deformable_detr_r50_12ep", ["F", "SA", "CA"], "scatter", "routed"),
    ("qr_deformable_detr_plusplus_r50_12ep", ["F", "SA", "CA"], "scatter", "routed"),
    ("qr_detr_shapes_tiny", ["F", "SA", "CA"], "scatter", "routed"),
    ("ablations/eeqr_sa", ["SA"], "scatter", "routed"),
    ("ablations/eeqr_ca", ["CA"], "scatter", "routed"),
    ("ablations/eeqr_f", ["F"], "scatter", "routed"),
    ("ablations/concat", ["F", "SA", "CA"], "concat", "routed"),
    ("ablations/ffn_all", ["F", "SA", "CA"], "scatter", "all"),
])
def test_configs(name, scheme, regroup, ffn_on):
    cfg = LazyConfig.load(str(CONFIGS / f"{name}.py"))
    w = cfg.model.transformer.decoder.layer_wrapper
    assert (list(w.scheme), w.regroup, w.ffn_on) == (scheme, regroup, ffn_on)
    assert cfg.train.output_dir.endswith(name.split("/")[-1])
    if name.startswith("qr_deformable_detr_r50") or name.startswith("ablations"):
        assert cfg.model.transformer.query_init == "embedding" and cfg.model.transformer.num_queries == 300
        assert cfg.optimizer.lr == 1e-4 and cfg.optimizer.lr_factors.backbone == 0.1 and cfg.dataloader.train.total_batch_size == 8
        assert cfg.train.max_iter == 12 * 14786
    routers = instantiate(cfg.model.transformer.decoder) if "shapes" in name else None
    if routers is not None:
        assert [layer.mode for layer in routers.layers] == ["F", "SA", "CA"]
    baseline = LazyConfig.load(str(CONFIGS / "ablations" / "baseline.py"))
    assert baseline.model.transformer.decoder.layer_wrapper is None and baseline.train.max_iter == 12 * 14786


def test_a_qr_checkpoint_evaluates_with_eval_only(tiny, train_net, shapes_mini, tmp_path):
    cfg = apply_overrides(LazyConfig.load(str(TINY)), tiny.model_overrides + tiny.data_overrides + [
        f"train.output_dir={tmp_path}", "train.eval_period=0", "train.max_iter=3", "train.checkpointer.period=1000"])
    cfg.train.hooks[0].period = 1
    tiny.run_train(cfg)
    assert (tmp_path / "routing_train.png").exists()
    rows = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    assert any("routing/layer0_F" in r for r in rows) and any("exit/loss_class_0" in r for r in rows)
    args = tiny.make_args("--eval-only", *tiny.model_overrides, *tiny.data_overrides, f"train.output_dir={tmp_path / 'eval'}",
                          f"train.init_checkpoint={tmp_path / 'model_final.pth'}")
    args.config_file = str(TINY)
    results = train_net.main(args)
    assert 0.0 <= results["bbox"]["AP"] <= 100.0


def test_ddp_with_blocks_that_receive_no_query(tiny, shapes_mini, tmp_path):
    """Two gloo processes with ``find_unused_parameters=False`` (the default) while every router bypasses
    every query: the skipped blocks still take part in the gradient all-reduce (with zeros)."""
    import os
    import subprocess

    cmd = [sys.executable, "train_net.py", "--config-file", str(TINY), "--num-gpus", "2", *tiny.model_overrides,
           "model.transformer.decoder.layer_wrapper.start=bypass", "train.max_iter=2", "train.eval_period=0",
           "train.checkpointer.period=1000", f"train.output_dir={tmp_path}", "dataloader.test.mapper.augmentations.min_size=64",
           "dataloader.test.mapper.augmentations.max_size=80"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    assert any(r.get("routing/layer0_F") == 0 for r in rows)  # no query passed layer 0


def test_routing_stats_tool(tiny, shapes_mini, tmp_path):
    from detr_plus_projects.qr_detr.tools import routing_stats

    cfg = apply_overrides(LazyConfig.load(str(TINY)), SMALL)
    torch.manual_seed(0)
    torch.save({"model": instantiate(cfg.model).state_dict()}, tmp_path / "qr.pth")
    out = tmp_path / "routing.png"
    counts = routing_stats.main(["--config-file", str(TINY), *SMALL, *tiny.data_overrides,  # options after the overrides
                                 f"train.init_checkpoint={tmp_path / 'qr.pth'}", "--max-images", "3", "--out", str(out)])
    assert sorted(counts) == ["layer0_F", "layer1_SA", "layer2_CA"] and all(len(v) == 3 for v in counts.values())
    assert all(0 <= c <= 20 for v in counts.values() for c in v) and out.stat().st_size > 1000


def test_own_exit_heads_take_the_exit_loss_off_the_detection_heads():
    """``exit_heads="own"``: training-only heads predict the exits; the exit loss then reaches the
    routers and those heads, not the detection heads, and inference does not run them."""
    cfg = apply_overrides(LazyConfig.load(str(TINY)), SMALL + ["model.transformer.decoder.layer_wrapper.exit_heads=own"])
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    losses, _ = model.training_losses(synthetic_batch(sizes=SMALL_IMAGE_SIZES))
    exits = sum(v for k, v in losses.items() if k.startswith("exit/"))
    decoder = model.transformer.decoder
    own = [p for layer in decoder.layers for p in layer.own_exit_heads().parameters()]
    detection = list(decoder.class_heads.parameters()) + list(decoder.box_heads.parameters())
    routers = [layer.router.weight for layer in decoder.layers]
    grads = torch.autograd.grad(exits, own + detection + routers, allow_unused=True)
    assert all(g is not None for g in grads[: len(own)]) and any(g.abs().sum() > 0 for g in grads[: len(own)])
    assert all(g is None for g in grads[len(own): len(own) + len(detection)])
    assert all(g is not None and g.abs().sum() > 0 for g in grads[-len(routers):])
    model.eval()
    calls = []
    hooks = [layer.own_exit_heads()["exit_class_head"].register_forward_hook(lambda *a: calls.append(1)) for layer in decoder.layers]
    with torch.no_grad():
        model(synthetic_batch(with_instances=False, sizes=SMALL_IMAGE_SIZES))
    for h in hooks:
        h.remove()
    assert not calls
    # They vanish from the inference model: the stripped weights load strictly into the model with
    # the layer's heads as exit heads, which has 6 x (d x C + C + 2 d^2 + 2 d + 4 d + 4) fewer parameters.
    assert not any("exit_" in k for k in strip_training_parts(model.state_dict()))
    inference_cfg = apply_overrides(LazyConfig.load(str(TINY)), SMALL + ["model.transformer.decoder.layer_wrapper.exit_heads=shared"])
    inference, _ = assert_inference_without_training_parts(model, inference_cfg.model, sizes=SMALL_IMAGE_SIZES)
    d, c, layers = decoder.d_model, decoder.class_heads[0].out_features, len(decoder.layers)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model) - count(inference) == layers * (d * c + c + 2 * d * d + 2 * d + 4 * d + 4)


@pytest.mark.parametrize("mode", ["SA", "F"])
def test_residual_gate_scales_each_passing_querys_update_by_its_sigma(mode):
    """gate="residual" (the diagnostic reading): a passing query moves sigma_EE of the way the routed
    block moves it, so the main loss reaches the router; bypassed queries are as with gate="exit"."""
    layer, state = plain_layer(), random_state()
    query, boxes, position, passes = inputs()
    context = context_for(boxes, position, state)
    exit_gate, residual = routed(layer, mode, ffn_on="all"), routed(layer, mode, ffn_on="all", gate="residual")
    sigma = torch.sigmoid(torch.stack([query[..., 0], torch.zeros_like(query[..., 0])], -1)).max(-1).values
    with torch.no_grad():
        if mode == "SA":  # the gated block's output, before CA and FFN on every query
            full = exit_gate.through(layer.self_attn, query, context, QuerySubset.of(passes), passes, sigma)
            gated = residual.through(layer.self_attn, query, context, QuerySubset.of(passes), passes, sigma)
        else:
            full = exit_gate.through(whole_layer(exit_gate), query, context, QuerySubset.of(passes), passes, sigma)
            gated = residual.through(whole_layer(residual), query, context, QuerySubset.of(passes), passes, sigma)
    expected = query + sigma[..., None] * (full - query)
    torch.testing.assert_close(gated, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(gated[~passes], query[~passes], rtol=0, atol=0)
    assert (gated[passes] - full[passes]).abs().max() > 1e-3  # sigma < 1: a real scaling
    cfg = apply_overrides(LazyConfig.load(str(TINY)), SMALL + ["model.transformer.decoder.layer_wrapper.gate=residual"])
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    losses, _ = model.training_losses(synthetic_batch(sizes=SMALL_IMAGE_SIZES))
    primary = sum(v for k, v in losses.items() if "/" not in k)
    routers = [layer.router.weight for layer in model.transformer.decoder.layers]
    assert all(g is not None and g.abs().sum() > 0 for g in torch.autograd.grad(primary, routers))


def test_bench_decoder_with_given_pass_counts_costs_less_than_the_plain_decoder():
    """benchmarks/bench_decoder.py --pass-counts: every routed layer passes exactly K queries per
    image, and the routed decoder's MACs fall below the plain one's (Table 3's saving)."""
    from detr_plus_benchmarks import bench_decoder

    args = SimpleNamespace(device="cpu", image_size=(64, 80), repeats=1, warmup=0, pass_counts=None)
    plain = bench_decoder.measure(str(REPO / "configs" / "shapes" / "deformable_detr_plain_tiny.py"), SMALL, args)
    args.pass_counts = bench_decoder.parse_counts("F=5,SA=3,CA=12")
    routed = bench_decoder.measure(str(TINY), SMALL, args)
    assert plain["passed"] == {} and routed["passed"] == {"layer0_F": 5.0, "layer1_SA": 3.0, "layer2_CA": 12.0}
    assert routed["decoder_gmacs"] < 0.8 * plain["decoder_gmacs"]


def test_force_pass_eval_tool(tiny, shapes_mini, tmp_path):
    """On a model whose routers already pass every query, forcing them to pass changes no AP; the
    table names each routed layer."""
    from detr_plus_projects.qr_detr.tools import force_pass_eval

    overrides = SMALL + ["model.transformer.decoder.layer_wrapper.start=pass"]
    cfg = apply_overrides(LazyConfig.load(str(TINY)), overrides)
    torch.manual_seed(0)
    torch.save({"model": instantiate(cfg.model).state_dict()}, tmp_path / "qr.pth")
    results = force_pass_eval.main(["--config-file", str(TINY), *overrides, *tiny.data_overrides,
                                    f"train.init_checkpoint={tmp_path / 'qr.pth'}"])
    assert list(results) == ["as trained", "layer0_F passes all", "layer1_SA passes all", "layer2_CA passes all",
                             "every routed layer passes all"]
    assert len(set(results.values())) == 1
    layer, query = EEQRLayer(plain_layer(), "F", D), inputs()[0]  # a random router drops some queries
    assert not layer.route(query)[0].all()
    force_pass_eval.force_pass([layer])
    assert layer.route(query)[0].all()


@pytest.mark.parametrize("mode", ["SA", "CA", "F"])
def test_a_variants_stream_is_routed_through_its_own_blocks_like_the_primary_one(mode):
    """Composition with decoder variants (issue #25): a variant's stream goes through the routed layer
    with the variant's blocks swapped in. Its output equals the routed layer whose FFN IS the
    variant's (same router decisions: the same input), and a variant with its own stream gets
    routed on its own queries; with every query passing, both equal the plain layer's variant."""
    state = random_state()
    query, boxes, position, _ = inputs()
    context = context_for(boxes, position, state)
    layer = plain_layer()
    torch.manual_seed(3)
    variant = OwnFFNVariant(D, 32).eval()
    wrapper = routed(layer, mode)
    with torch.no_grad():
        out = wrapper(LayerInputs({PRIMARY: Stream(query, context)}, {"v": variant}))
        swapped = routed(layer, mode)
        swapped.layer.ffn.ffn = variant.ffn  # the same layer with the variant's FFN as its own
        expected = call(swapped, query, context).hidden
        assert torch.equal(out.hidden, call(wrapper, query, context).hidden)
        assert torch.allclose(out.variants["v"], expected, atol=1e-6)
        own = query.flip(1)  # another stream: its own queries decide its routing
        out_own = wrapper(LayerInputs({PRIMARY: Stream(query, context), "v": Stream(own, context)}, {"v": variant}))
        assert torch.allclose(out_own.variants["v"], call(swapped, own, context).hidden, atol=1e-6)
        everyone = routed(layer, mode)
        everyone.router.weight.zero_()
        everyone.router.bias.copy_(torch.tensor([1.0, -1.0]))  # every query passes
        plain = layer(LayerInputs({PRIMARY: Stream(query, context)}, {"v": variant}))
        passing = everyone(LayerInputs({PRIMARY: Stream(query, context)}, {"v": variant}))
    assert torch.allclose(passing.variants["v"], plain.variants["v"], atol=1e-5)
    assert torch.allclose(passing.hidden, plain.hidden, atol=1e-5)


def test_a_variants_parameters_get_a_zero_gradient_when_no_query_passes():
    """DDP without find_unused_parameters needs every parameter used: a variant's blocks that no query
    passes (start="bypass") still get a (zero) gradient, as the layer's own blocks do."""
    state = random_state()
    query, boxes, position, _ = inputs()
    wrapper = EEQRLayer(plain_layer(), "SA", D, start="bypass").train()
    variant = OwnFFNVariant(D, 32).train()
    out = wrapper(LayerInputs({PRIMARY: Stream(query, context_for(boxes, position, state))}, {"v": variant}))
    (out.hidden.sum() + out.variants["v"].sum()).backward()
    grads = [p.grad for p in variant.parameters()]
    assert all(g is not None and torch.count_nonzero(g) == 0 for g in grads)


@pytest.mark.parametrize("mode", ["SA", "CA", "F"])
def test_a_variant_reuses_the_routed_blocks_it_shares_with_the_primary_stream(mode):
    """An FFN-only variant on the primary stream (a LoRA-DETR branch) reads the primary queries'
    routed state before the FFN: the routing, self- and cross-attention run once per layer call."""
    state = random_state()
    query, boxes, position, _ = inputs()
    wrapper = routed(plain_layer(), mode)
    calls = {"router": 0, "self_attn": 0, "cross_attn": 0, "ffn": 0}
    for name in calls:
        module = wrapper.router if name == "router" else getattr(wrapper.layer, name)
        module.register_forward_hook(lambda *a, name=name: calls.__setitem__(name, calls[name] + 1))
    with torch.no_grad():
        wrapper(LayerInputs({PRIMARY: Stream(query, context_for(boxes, position, state))},
                            {"a": OwnFFNVariant(D, 32), "b": OwnFFNVariant(D, 32)}))
    assert calls == {"router": 1, "self_attn": 1, "cross_attn": 1, "ffn": 3}  # the FFN block: its own FFN and each variant's


def test_fig2_component_and_query_count_tool(tiny, shapes_mini, tmp_path):
    """QR-DETR Fig. 2 on a plain Deformable DETR: with self-attention skipped the queries are
    independent, so the first N queries' outputs equal the full model's first N; with it they are
    not; with cross-attention skipped a layer is FFN(SA(q)); every block is back afterwards; the tool
    prints a table and writes a PNG (AP of every component at every query count)."""
    from detr_plus_projects.qr_detr.tools import component_queries_eval as tool

    plain = REPO / "configs" / "shapes" / "deformable_detr_plain_tiny.py"
    cfg = apply_overrides(LazyConfig.load(str(plain)), SMALL)
    torch.manual_seed(0)
    model = instantiate(cfg.model).eval()
    batch = synthetic_batch(with_instances=False, sizes=SMALL_IMAGE_SIZES)

    def last_hidden():
        with torch.no_grad():
            return model.detection_pass(batch).decoder.layers[-1].hidden

    full = last_hidden()
    with tool.skipping(model, "self_attn"):
        alone = last_hidden()
        with tool.first_queries(model, 7):
            seven = last_hidden()
    torch.testing.assert_close(seven, alone[:, :7], rtol=0, atol=1e-5)
    with tool.first_queries(model, 7):
        assert (last_hidden() - full[:, :7]).abs().max() > 1e-3  # self-attention mixes the queries
    layer = model.transformer.decoder.layers[0]
    query = torch.randn(2, 5, model.transformer.decoder.d_model)
    points = torch.rand(2, 5, 2)
    stream = QueryStream(query, points, points, torch.randn(2, 5, model.transformer.decoder.d_model))
    context = model.transformer.decoder.context_of(stream, model.detection_pass(batch).state)
    with torch.no_grad(), tool.skipping(model, "cross_attn"):
        got = call(layer, query, context).hidden
        expected = layer.ffn(layer.self_attn(query, context), context)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(last_hidden(), full)  # every block restored
    torch.save({"model": model.state_dict()}, tmp_path / "plain.pth")
    out = tmp_path / "fig2.png"
    table = tool.main(["--config-file", str(plain), *SMALL, *tiny.data_overrides, f"train.init_checkpoint={tmp_path / 'plain.pth'}",
                       "--queries", "20", "10", "--out", str(out)])
    assert list(table) == ["SA only", "CA only", "SA + CA"] and all(list(row) == [20, 10] for row in table.values())
    assert all(0.0 <= ap <= 100.0 or ap != ap for row in table.values() for ap in row.values()) and out.stat().st_size > 1000
