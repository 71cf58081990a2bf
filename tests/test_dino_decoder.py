"""The decoder and transformer options DINO's public code needs (``configs/models/dino_r50.py``): the
output LayerNorm before the heads with the refinement chain on the raw output, the inverse-sigmoid
clamp, box-sine positions in the first level's valid-region coordinates, the Xavier content
embedding, and mixed query selection (top-k by the largest class score, detached anchors); each
against the formula it implements."""
import math

import torch
from torch import nn

from detr_plus.layers import MLP
from detr_plus.layers.box_ops import inverse_sigmoid
from detr_plus.layers.position_encoding import box_sine_embedding
from detr_plus.modeling import DeformableDecoder, EncoderState, QueryStream
from model_utils import D_MODEL, build_tiny_model, encode, synthetic_batch


def dino_decoder(**kwargs):
    torch.manual_seed(0)
    options = dict(num_layers=2, d_model=16, num_classes=3, share_heads=True, look_forward_twice=True, output_norm=True,
                   inverse_sigmoid_eps=1e-3, num_heads=2, num_levels=1, d_ffn=32)
    options.update(kwargs)
    decoder = DeformableDecoder(**options)
    with torch.no_grad():  # non-trivial heads and norm, so that normed and raw outputs differ
        for p in decoder.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return decoder


def test_output_norm_feeds_the_heads_while_the_refinement_chain_reads_the_raw_output():
    decoder = dino_decoder()
    hidden = torch.randn(2, 5, 16)
    previous = torch.rand(2, 5, 4).requires_grad_()  # the previous layer's refined boxes (with their graph)
    stream = QueryStream(torch.zeros(2, 5, 16), previous.detach(), previous)
    predictions, following = decoder.step(1, hidden, stream)
    normed = decoder.output_norm(hidden)
    box_head, class_head = decoder.box_heads[1], decoder.class_heads[1]
    torch.testing.assert_close(predictions.logits, class_head(normed))
    # Loss boxes: box_head(norm(h)) on the undetached reference (look forward twice), eps 1e-3.
    torch.testing.assert_close(predictions.boxes, (box_head(normed) + inverse_sigmoid(previous, 1e-3)).sigmoid())
    # Next reference: box_head(h) on the detached reference.
    chain = (box_head(hidden) + inverse_sigmoid(previous.detach(), 1e-3)).sigmoid()
    torch.testing.assert_close(following.reference, chain.detach())
    torch.testing.assert_close(following.reference_for_grad, chain)
    assert not torch.allclose(predictions.boxes, chain)  # the norm matters
    assert torch.equal(predictions.hidden, hidden) and torch.equal(following.query, hidden)
    # Gradient of the loss boxes reaches the previous layer's refinement (look forward twice).
    grad, = torch.autograd.grad(predictions.boxes.sum(), previous)
    assert grad.abs().sum() > 0


def test_without_output_norm_the_step_is_the_deformable_one():
    decoder = dino_decoder(output_norm=False, inverse_sigmoid_eps=1e-5)
    assert decoder.output_norm is None
    hidden, previous = torch.randn(2, 5, 16), torch.rand(2, 5, 4)
    predictions, following = decoder.step(0, hidden, QueryStream(hidden, previous, previous))
    expected = (decoder.box_heads[0](hidden) + inverse_sigmoid(previous)).sigmoid()
    torch.testing.assert_close(predictions.boxes, expected)
    torch.testing.assert_close(following.reference, expected)


def test_the_inverse_sigmoid_clamp_is_the_configured_one():
    decoder = dino_decoder()
    thin = torch.tensor([[[0.5, 0.5, 0.0, 1e-6]]])  # a zero-width box: only the clamp sets its logit
    predictions, _ = decoder.step(0, torch.zeros(1, 1, 16), QueryStream(torch.zeros(1, 1, 16), thin, thin))
    delta = decoder.box_heads[0](decoder.output_norm(torch.zeros(1, 1, 16)))
    expected_w = (delta[..., 2] + math.log(1e-3 / (1 - 1e-3))).sigmoid()
    torch.testing.assert_close(predictions.boxes[..., 2], expected_w)


def test_box_sine_positions_use_the_first_levels_valid_region_coordinates():
    """Query positions are MLP(sine(box x valid ratio of level 0)), as the sampling points: on a
    padded batch they differ from the raw box's, without padding they equal it."""
    model = build_tiny_model("dino")
    state = encode(model, synthetic_batch())  # two image sizes: the smaller one is padded
    ratios = state.valid_ratios[:, 0]
    assert (ratios < 1).any()
    boxes = torch.rand(2, 7, 4)
    decoder = model.transformer.decoder
    context = decoder.context_of(QueryStream(torch.zeros(2, 7, D_MODEL), boxes, boxes), state)
    scaled = boxes * torch.cat([ratios, ratios], -1)[:, None]
    torch.testing.assert_close(context.query_pos, decoder.ref_point_head(box_sine_embedding(scaled, D_MODEL // 2)))
    raw = decoder.ref_point_head(box_sine_embedding(boxes, D_MODEL // 2))
    unpadded = (ratios == 1).all(-1)
    torch.testing.assert_close(context.query_pos[unpadded], raw[unpadded])
    assert not torch.allclose(context.query_pos[~unpadded], raw[~unpadded])


def test_xavier_content_embedding_when_asked():
    normal = build_tiny_model("dino", query_content_init="normal").transformer.query_content.weight
    xavier = build_tiny_model("dino").transformer.query_content.weight  # DINO's config: "xavier"
    bound = math.sqrt(6 / sum(xavier.shape))
    assert xavier.abs().max() <= bound and xavier.abs().max() > 0.9 * bound
    assert normal.std() > 0.9 and normal.abs().max() > bound  # nn.Embedding's N(0, 1)


def test_dino_heads_are_shared_and_the_box_mlp_is_not_the_encoders():
    decoder = build_tiny_model("dino").transformer.decoder
    assert all(h is decoder.class_heads[0] for h in decoder.class_heads)
    assert all(h is decoder.box_heads[0] for h in decoder.box_heads)
    assert isinstance(decoder.box_heads[0], MLP) and decoder.output_norm is not None


def test_mixed_query_selection_takes_the_top_k_by_the_largest_class_score_with_detached_anchors():
    """DINO Sec. 3.3 on four hand-made encoder tokens, one 1 x 4 level: the proposals are (cx, 0.5, 0.05,
    0.05) with cx = (j + 0.5) / 4 = 0.125, 0.375, 0.625, 0.875; the class logits [3, -5, -5], [1, 1, 1],
    [-4, 2.5, -4], [0.5, 0.5, 0] have the largest class scores 3, 1, 2.5, 0.5, so the top 2 are tokens 0
    and 2 (by the mean, -2.33, 1, -1.83, 0.33, they would be 1 and 3; by the first logit 0 and 1). A
    zero box head keeps the proposals: sigmoid(0 + log(p / (1 - p))) = p, so the anchors are (0.125,
    0.5, 0.05, 0.05) and (0.625, 0.5, 0.05, 0.05), detached (the decoder's losses do not train the
    encoder heads through them), while the encoder predictions the encoder loss reads keep their graph;
    the content queries are the learned embedding (mixed selection)."""
    transformer = build_tiny_model("dino", num_queries=2).transformer
    assert transformer.query_init == "mixed" and not transformer.enc_class_agnostic
    logits = torch.tensor([[[3.0, -5.0, -5.0], [1.0, 1.0, 1.0], [-4.0, 2.5, -4.0], [0.5, 0.5, 0.0]]])

    class HandLogits(nn.Module):
        def forward(self, x):
            return logits.expand(x.shape[0], -1, -1)

    box_head = nn.Linear(D_MODEL, 4)
    nn.init.zeros_(box_head.weight)
    nn.init.zeros_(box_head.bias)
    state = EncoderState(torch.randn(1, 4, D_MODEL), torch.tensor([[1, 4]]), torch.tensor([0]), torch.ones(1, 1, 2),
                         torch.zeros(1, 4, dtype=torch.bool))
    selection = transformer.select_queries(state, heads=(HandLogits(), box_head))
    assert selection.topk_indices.tolist() == [[0, 2]]
    anchors = torch.tensor([[[0.125, 0.5, 0.05, 0.05], [0.625, 0.5, 0.05, 0.05]]])
    torch.testing.assert_close(selection.queries.reference, anchors, rtol=0, atol=1e-6)
    assert not selection.queries.reference.requires_grad
    encoder = selection.encoder_predictions
    torch.testing.assert_close(encoder["logits"], logits[:, [0, 2]], rtol=0, atol=0)
    torch.testing.assert_close(encoder["boxes"], anchors, rtol=0, atol=1e-6)
    assert encoder["boxes"].requires_grad  # the encoder loss trains the box head
    torch.testing.assert_close(selection.queries.content[0], transformer.query_content.weight, rtol=0, atol=0)
