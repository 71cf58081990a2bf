"""tools/convert_checkpoint.py: official Deformable-DETR state dicts (their key names and shapes, in
tests/golden/official_deformable_detr_keys.json, written out from the official model's structure)
load into our published configs with nothing missing or unexpected, and every tensor lands where
the official code uses it."""
import importlib.util
import json
import math
import re
from pathlib import Path

import pytest
import torch

import detr_plus  # noqa: F401
from detr_plus.engine.checkpoint import load_strictly
from detr_plus.engine.official_checkpoint import (
    OFFICIAL_VARIANTS,
    coco_category_ids,
    convert_official_deformable_detr,
    official_variant,
)
from detr_plus.layers.position_encoding import box_sine_embedding, sine_features

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_KEYS = json.loads((ROOT / "tests/golden/official_deformable_detr_keys.json").read_text())


def official_state(variant, seed=0):
    """Random tensors under the official names and shapes; the refine / two-stage decoder's second
    reference to the heads holds the same tensors, and the single-stage layers share one class and
    one box head, as in the official model."""
    generator = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(shape, generator=generator) for k, shape in OFFICIAL_KEYS[variant].items()}
    for key in state:
        alias = re.fullmatch(r"transformer\.decoder\.((?:bbox|class)_embed\..+)", key)
        if alias:
            state[key] = state[alias.group(1)]
        shared = re.fullmatch(r"((?:bbox|class)_embed)\.[1-5]\.(.+)", key)
        if variant == "single_stage" and shared:
            state[key] = state[f"{shared.group(1)}.0.{shared.group(2)}"]
    return state


@pytest.fixture(scope="module", params=list(OFFICIAL_VARIANTS))
def converted(request):
    official = official_state(request.param)
    ours = convert_official_deformable_detr(official)
    model = load_strictly(str(ROOT / OFFICIAL_VARIANTS[request.param]), ours)  # strict: nothing missing or unexpected
    return request.param, official, ours, model.state_dict()


def test_variant_is_read_from_the_tensors(converted):
    variant, official, _, _ = converted
    assert official_variant(official) == variant


def test_every_official_tensor_lands_in_the_model(converted):
    _, official, ours, loaded = converted
    assert set(ours) == set(loaded)
    pairs = {
        "backbone.0.body.conv1.weight": "backbone.stem.conv1.weight",
        "backbone.0.body.bn1.running_var": "backbone.stem.conv1.norm.running_var",
        "backbone.0.body.layer2.1.bn2.running_mean": "backbone.res3.1.conv2.norm.running_mean",
        "backbone.0.body.layer4.0.downsample.0.weight": "backbone.res5.0.shortcut.weight",
        "backbone.0.body.layer1.0.downsample.1.weight": "backbone.res2.0.shortcut.norm.weight",
        "input_proj.2.0.weight": "neck.convs.2.0.weight",
        "input_proj.3.1.bias": "neck.extra_convs.0.1.bias",
        "transformer.level_embed": "transformer.level_embed",
        "transformer.encoder.layers.5.linear2.weight": "transformer.encoder.layers.5.ffn.linear2.weight",
        "transformer.encoder.layers.0.self_attn.sampling_offsets.bias": "transformer.encoder.layers.0.self_attn.sampling_offsets.bias",
        "transformer.decoder.layers.3.cross_attn.value_proj.weight": "transformer.decoder.layers.3.cross_attn.attn.value_proj.weight",
        "transformer.decoder.layers.3.norm1.weight": "transformer.decoder.layers.3.cross_attn.norm.weight",
        "transformer.decoder.layers.4.self_attn.in_proj_weight": "transformer.decoder.layers.4.self_attn.attn.in_proj_weight",
        "transformer.decoder.layers.4.norm2.bias": "transformer.decoder.layers.4.self_attn.norm.bias",
        "transformer.decoder.layers.5.linear1.bias": "transformer.decoder.layers.5.ffn.ffn.linear1.bias",
        "transformer.decoder.layers.5.norm3.weight": "transformer.decoder.layers.5.ffn.norm.weight",
        "bbox_embed.5.layers.2.bias": "transformer.decoder.box_heads.5.layers.2.bias",
        "query_embed.weight": "transformer.query_embedding.weight",  # [position | content] in both
        "transformer.reference_points.weight": "transformer.reference_points.weight",
        "transformer.enc_output.weight": "transformer.enc_output.0.weight",
        "transformer.enc_output_norm.bias": "transformer.enc_output.1.bias",
        "transformer.pos_trans_norm.weight": "transformer.proposal_embedding.1.weight",
        "bbox_embed.6.layers.0.weight": "transformer.enc_box_head.layers.0.weight",
    }
    checked = 0
    for theirs, mine in pairs.items():
        if theirs in official:
            assert torch.equal(loaded[mine], official[theirs]), (theirs, mine)
            checked += 1
    assert checked >= 18


def test_class_heads_keep_the_rows_of_the_80_coco_category_ids(converted):
    _, official, _, loaded = converted
    ids = coco_category_ids()
    assert len(ids) == 80 and ids[:3] == [1, 2, 3] and ids[-1] == 90 and 12 not in ids  # id 12 is unused in COCO
    for layer in (0, 5):
        theirs, mine = official[f"class_embed.{layer}.weight"], loaded[f"transformer.decoder.class_heads.{layer}.weight"]
        assert mine.shape == (80, 256)
        assert torch.equal(mine[0], theirs[1]) and torch.equal(mine[11], theirs[13]) and torch.equal(mine[79], theirs[90])
        assert torch.equal(loaded[f"transformer.decoder.class_heads.{layer}.bias"], official[f"class_embed.{layer}.bias"][ids])


def test_two_stage_proposal_head_keeps_row_0_the_score_its_top_k_reads(converted):
    variant, official, _, loaded = converted
    if variant != "two_stage_refine":
        pytest.skip("single-stage models have no proposal head")
    assert torch.equal(loaded["transformer.enc_class_head.weight"], official["class_embed.6.weight"][:80])
    assert torch.equal(loaded["transformer.enc_class_head.bias"][0], official["class_embed.6.bias"][0])


def test_proposal_embedding_columns_follow_our_coordinate_order():
    """The official two-stage embeds a proposal as sine features of (x, y, w, h) (128 each); ours of
    (y, x, w, h): after conversion the linear layer gives the same output for the same box."""
    official = official_state("two_stage_refine")
    ours = convert_official_deformable_detr(official)
    boxes = torch.tensor([[0.2, 0.7, 0.1, 0.3], [0.9, 0.4, 0.5, 0.05]])
    scaled = boxes * 2 * math.pi
    theirs = torch.cat([sine_features(scaled[:, i], 128) for i in range(4)], -1)  # x, y, w, h
    expected = theirs @ official["transformer.pos_trans.weight"].T
    got = box_sine_embedding(boxes, 128) @ ours["transformer.proposal_embedding.0.weight"].T
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(box_sine_embedding(boxes, 128) @ official["transformer.pos_trans.weight"].T, expected, atol=1e-2)


def test_inconsistent_or_foreign_state_dicts_are_refused_with_the_key():
    official = official_state("refine")
    official["transformer.decoder.bbox_embed.2.layers.0.bias"] = torch.zeros(256)
    with pytest.raises(ValueError, match="transformer.decoder.bbox_embed.2.layers.0.bias"):
        convert_official_deformable_detr(official)
    official = official_state("single_stage")
    for layer in range(6):
        official[f"class_embed.{layer}.weight"] = torch.zeros(3, 256)
        official[f"class_embed.{layer}.bias"] = torch.zeros(3)
    with pytest.raises(ValueError, match="class_embed|class_heads.0.weight' has 3 rows"):
        convert_official_deformable_detr(official)
    assert convert_official_deformable_detr(official, coco_classes=False)["transformer.decoder.class_heads.0.bias"].shape == (3,)
    with pytest.raises(ValueError, match="not an official Deformable-DETR"):
        convert_official_deformable_detr({"backbone.conv1.weight": torch.zeros(1)})


def test_command_line_round_trip(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("convert_checkpoint", ROOT / "tools/convert_checkpoint.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    official = official_state("single_stage")
    torch.save({"model": official, "epoch": 49}, tmp_path / "official.pth")
    state = tool.main([str(tmp_path / "official.pth"), str(tmp_path / "ours.pth"), "--check"])
    out = capsys.readouterr().out
    assert "single stage" in out and "configs/models/deformable_detr_r50.py" in out and "loads strictly" in out
    saved = torch.load(tmp_path / "ours.pth", weights_only=False)["model"]
    assert set(saved) == set(state) and torch.equal(saved["transformer.query_embedding.weight"], official["query_embed.weight"])
