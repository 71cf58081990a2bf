#!/usr/bin/env python
"""Inference cost of the decoder alone and of the whole model: fvcore MACs and latency, one image.

    python benchmarks/bench_decoder.py --config-file CONFIG [key=value ...] [--compare CONFIG2 [key=value ...]]
        [--image-size H W] [--pass-counts F=142,SA=63,CA=183] [--device cpu|cuda] [--repeats N] [--threads N]

For QR-DETR (``projects/qr_detr``) the cost depends on how many queries the routers pass.
``--pass-counts MODE=K,...`` makes every routed layer of that mode pass K random queries per image
(QR-DETR Table 2's averages at 300 queries: F 142, SA 63, CA 183) instead of what its (untrained)
router decides; the routed layers' mean passed counts are printed either way. MACs are fvcore's
count (1 multiply-add = 1 flop), with the deformable-attention gather counted as in bench_model.py.
"""
import argparse
import os
import warnings

import detr_plus  # noqa: F401  (detectron2 compatibility layer first)
import torch
from detectron2.config import LazyConfig, instantiate
from torch import nn

from detr_plus_benchmarks.bench_model import EXTRA_FLOP_HANDLES, count_flops, synthetic_batch
from detr_plus_benchmarks.timing import time_calls
from detr_plus.engine.config import apply_overrides, resolve_device
from detr_plus.modeling import DecoderQueries


class DecoderOnly(nn.Module):
    """Tensors in, tensors out (for tracing): the decoder on fixed encoder state and queries."""

    def __init__(self, model, state, queries):
        super().__init__()
        self.transformer, self.state, self.queries = model.transformer, state, queries

    def forward(self, content):
        q = self.queries
        out = self.transformer.decode(DecoderQueries(content, q.reference, q.position, q.valid), self.state)
        return out.layers[-1].logits, out.layers[-1].boxes


def force_pass_counts(model, counts, seed=0):
    """Routed layers of mode M pass ``counts[M]`` random queries per image (cost vs routing count)."""
    try:
        from detr_plus_projects.qr_detr.modeling import routed_layers
    except ImportError:
        return
    gen = torch.Generator().manual_seed(seed)
    for layer in routed_layers(model).values():
        if layer.mode not in counts:
            continue
        k = counts[layer.mode]

        def route(query, k=k):
            batch, num = query.shape[:2]
            chosen = torch.rand(batch, num, generator=gen).argsort(1)[:, :k].to(query.device)
            # a tensor source, not a Python bool: fvcore's JIT trace has no aten::scatter for a bool value
            passes = torch.zeros(batch, num, dtype=torch.bool, device=query.device).scatter(1, chosen, torch.ones_like(chosen, dtype=torch.bool))
            return passes, torch.ones(batch, num, device=query.device)

        layer.route = route


def passed_counts(model):
    try:
        from detr_plus_projects.qr_detr.modeling import routed_layers
    except ImportError:
        return {}
    return {f"layer{i}_{layer.mode}": float(layer.last_passed.float().mean()) for i, layer in routed_layers(model).items()
            if layer.last_passed is not None}


def decoder_macs(module, content):
    from fvcore.nn import FlopCountAnalysis

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis = FlopCountAnalysis(module, (content,)).set_op_handle(**EXTRA_FLOP_HANDLES)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        return analysis.total()


def measure(config_file, overrides, args):
    device = torch.device(resolve_device(args.device))
    cfg = apply_overrides(LazyConfig.load(config_file), list(overrides))
    torch.manual_seed(0)
    model = instantiate(cfg.model).to(device).eval()
    if args.pass_counts:
        force_pass_counts(model, args.pass_counts)
    num_classes = model.transformer.decoder.class_heads[0].out_features
    inputs = synthetic_batch(1, tuple(args.image_size), num_classes, 0, with_instances=False)
    image = inputs[0]["image"].to(device)
    with torch.no_grad():
        _, state, selection = model.encode_and_select(inputs)
    q = selection.queries  # detached: the traced decoder takes them as constants (views of parameters need it)
    decoder = DecoderOnly(model, state, DecoderQueries(*(None if t is None else t.detach() for t in (q.content, q.reference, q.position, q.valid))))
    content = selection.queries.content.detach()
    result = dict(config=config_file, overrides=list(overrides), queries=model.transformer.num_queries)
    result["decoder_ms"] = time_calls(lambda: decoder(content), args.repeats, args.warmup, device)
    result["passed"] = passed_counts(model)
    result["decoder_gmacs"] = decoder_macs(decoder, content) / 1e9

    def whole():
        with torch.no_grad():
            model(inputs)

    result["model_ms"] = time_calls(whole, args.repeats, args.warmup, device)
    result["model_gmacs"] = count_flops(model, image)["total"] / 1e9
    return result


def parse_counts(text):
    return {mode: int(k) for mode, k in (item.split("=") for item in text.split(","))} if text else None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("opts", nargs="*", default=[])
    parser.add_argument("--compare", nargs="+", action="append", default=[], metavar="CONFIG2 [key=value")
    parser.add_argument("--image-size", type=int, nargs=2, default=(800, 1088), metavar=("H", "W"))
    parser.add_argument("--pass-counts", type=parse_counts, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = [(args.config_file, args.opts)] + [(c[0], c[1:]) for c in args.compare]
    results = [measure(config, opts, args) for config, opts in runs]
    print(f"torch {torch.__version__}, {resolve_device(args.device)}, {torch.get_num_threads()} threads, "
          f"image {args.image_size[0]}x{args.image_size[1]}, pass counts {args.pass_counts or 'from the routers'}")
    print("| config | queries | decoder ms | decoder GMACs | model ms | model GMACs | queries passed (mean per image) |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        passed = ", ".join(f"{k} {v:.0f}" for k, v in r["passed"].items()) or "-"
        name = os.path.relpath(os.path.abspath(r["config"])) + (" " + " ".join(r["overrides"]) if r["overrides"] else "")
        print(f"| {name} | {r['queries']} | {r['decoder_ms']['median_ms']:.1f} | {r['decoder_gmacs']:.3f} | "
              f"{r['model_ms']['median_ms']:.1f} | {r['model_gmacs']:.2f} | {passed} |")


if __name__ == "__main__":
    main()
