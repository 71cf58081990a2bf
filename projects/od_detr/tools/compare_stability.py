#!/usr/bin/env python
"""One PNG of the matching-stability curves of several runs (OD-DETR Fig. 1 / Fig. 5 style):

    python projects/od_detr/tools/compare_stability.py RUN_DIR [RUN_DIR ...] --out stability.png

Each RUN_DIR holds the ``matching_stability.json`` that ``MatchingStabilityHook`` wrote; curves are
labelled ``<run dir name>: <metric>``.
"""
import argparse
import json
import os

from detr_plus_projects.od_detr.modeling.stability import plot_stability


def merged_history(run_dirs):
    """The runs' rows keyed by iteration, each metric renamed ``<run>/<metric>``."""
    rows = {}
    for run in run_dirs:
        path = os.path.join(run, "matching_stability.json")
        if not os.path.exists(path):
            raise SystemExit(f"{path}: not found (a run with MatchingStabilityHook writes it at the end)")
        name = os.path.basename(os.path.normpath(run))
        for row in json.load(open(path)):
            merged = rows.setdefault(row["iteration"], {"iteration": row["iteration"]})
            merged.update({f"{name}: {k}": v for k, v in row.items() if k != "iteration"})
    return [rows[i] for i in sorted(rows)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", default="matching_stability_compared.png")
    args = parser.parse_args(argv)
    png = plot_stability(merged_history(args.runs), args.out)
    print(f"Matching stability of {len(args.runs)} runs: {os.path.abspath(png)}")
    return png


if __name__ == "__main__":
    main()
