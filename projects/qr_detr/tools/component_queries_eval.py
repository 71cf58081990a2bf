#!/usr/bin/env python
"""QR-DETR's Fig. 2 analysis on a trained Deformable DETR: COCO AP with only the decoder's
self-attention (cross-attention skipped), only its cross-attention (self-attention skipped), or
both, while the number of object queries shrinks (the first N query slots kept). A table and a PNG.

    python projects/qr_detr/tools/component_queries_eval.py --config-file configs/shapes/deformable_detr_plain_tiny.py \
        train.init_checkpoint=CKPT [--queries 100 75 50 25] [--out fig2.png] [key=value ...]
"""
import argparse
import contextlib
import os

import detr_plus  # noqa: F401  (detectron2 compatibility patches)
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from torch import nn

from detr_plus.engine.config import apply_overrides, resolve_device
from detr_plus_projects.qr_detr.tools import evaluation

COMPONENTS = {"SA only": "cross_attn", "CA only": "self_attn", "SA + CA": None}  # name: the block skipped


class SkippedBlock(nn.Module):
    """A decoder block that leaves its queries unchanged (the block removed, Fig. 2a)."""

    def forward(self, query, context):
        return query


@contextlib.contextmanager
def skipping(model, block_name):
    """Every decoder layer's ``block_name`` ("self_attn" / "cross_attn") skipped inside the block."""
    layers = list(dict.fromkeys(model.transformer.decoder.layers))  # a shared layer once
    kept = [getattr(layer, block_name) for layer in layers]
    for layer in layers:
        setattr(layer, block_name, SkippedBlock())
    try:
        yield model
    finally:
        for layer, block in zip(layers, kept):
            setattr(layer, block_name, block)


@contextlib.contextmanager
def first_queries(model, count):
    """The model decodes only its first ``count`` learned query slots (Fig. 2b); the published
    single-stage model's queries are ``transformer.query_embedding`` rows."""
    transformer = model.transformer
    if transformer.query_init != "embedding":
        raise ValueError("Fig. 2's query reduction is for a model with learned query slots (query_init='embedding')")
    full, total = transformer.query_embedding, transformer.num_queries
    if not 0 < count <= total:
        raise ValueError(f"--queries {count}: between 1 and the model's {total}")
    transformer.query_embedding = nn.Embedding.from_pretrained(full.weight[:count], freeze=True)
    transformer.num_queries = count
    try:
        yield model
    finally:
        transformer.query_embedding, transformer.num_queries = full, total


def component_query_table(model, evaluate, query_counts):
    """{component: {queries: AP}} with ``evaluate(model) -> AP``."""
    table = {}
    for component, skipped in COMPONENTS.items():
        table[component] = {}
        for count in query_counts:
            with first_queries(model, count), (skipping(model, skipped) if skipped else contextlib.nullcontext()):
                table[component][count] = evaluate(model)
    return table


def plot(table, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for component, row in table.items():
        ax.plot(list(row), list(row.values()), marker="o", label=component)
    ax.set_xlabel("object queries")
    ax.set_ylabel("bbox AP")
    ax.set_title("QR-DETR Fig. 2: decoder blocks vs queries")
    ax.invert_xaxis()
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--queries", type=int, nargs="+", default=None, help="query counts (default: all, 3/4, 1/2, 1/4)")
    parser.add_argument("--out", default=None, help="PNG path (default: <train.output_dir>/component_queries.png)")
    parser.add_argument("opts", nargs="*", help="key=value config overrides")
    args = parser.parse_intermixed_args(argv)
    cfg = apply_overrides(LazyConfig.load(args.config_file), args.opts)
    model = instantiate(cfg.model).to(resolve_device(cfg.train.get("device", "auto"))).eval()
    DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
    total = model.transformer.num_queries
    counts = args.queries or [total, total * 3 // 4, total // 2, total // 4]
    loader = instantiate(cfg.dataloader.test)

    table = component_query_table(model, lambda evaluated: evaluation.bbox_ap(cfg, evaluated, loader), counts)
    print("| decoder | " + " | ".join(f"{c} queries" for c in counts) + " |")
    print("|---" * (len(counts) + 1) + "|")
    for component, row in table.items():
        print(f"| {component} | " + " | ".join(f"{ap:.1f}" for ap in row.values()) + " |")
    out = args.out or os.path.join(cfg.train.output_dir, "component_queries.png")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    plot(table, out)
    print(f"plot: {out}")
    return table


if __name__ == "__main__":
    main()
