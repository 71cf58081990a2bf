"""Shared fixtures for the engine / training tests.

* The shapes data sets live in a cached folder (``$DETR_PLUS_DATASETS``, default ``<repo>/datasets``,
  gitignored) so they are generated once per machine. The variable is set before ``detr_plus.data``
  is imported (importing it registers the default splits under that root) and is inherited by the
  subprocesses the tests start.
* ``shapes_train_mini`` (64 images) and ``shapes_val_mini`` (16 images) keep training and
  evaluation fast.
* ``tiny`` (helpers and constants: ``tiny.make_cfg``, ``tiny.run_train``, ``tiny.make_args``,
  ``tiny.config``, ...) loads ``configs/shapes/deformable_detr_tiny.py`` with overrides that make
  the model and the run tiny, and trains it in-process through ``train_net.do_train``;
  ``tiny_cfg`` is that config writing into the test's ``tmp_path``.
"""
import importlib.util
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("DETR_PLUS_DATASETS", str(REPO / "datasets"))
# Without a GPU, the Triton deformable-attention kernel is tested in Triton's interpreter on CPU
# tensors; the interpreter is chosen when triton is imported (by detr_plus, below). With a GPU the
# same tests run the compiled kernel.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import detr_plus  # noqa: E402,F401  (compat shims before detectron2)
import detr_plus.data  # noqa: E402  (registers shapes_train / shapes_val under $DETR_PLUS_DATASETS)
from detectron2.config import LazyConfig  # noqa: E402
from detectron2.engine import default_argument_parser  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402

from detr_plus.engine.config import apply_overrides  # noqa: E402

TINY_CONFIG = str(REPO / "configs" / "shapes" / "deformable_detr_tiny.py")
MINI_SPLITS = {"shapes_train_mini": 64, "shapes_val_mini": 16}

# The model and the run made tiny (about 0.2-0.4 s per iteration on 2 CPU cores).
TINY_MODEL_OVERRIDES = [
    "model.transformer.encoder.num_layers=1",
    "model.transformer.decoder.num_layers=2",
    "model.transformer.num_queries=30",
    "dataloader.train.total_batch_size=2",
    "dataloader.train.num_workers=0",
    "train.log_period=1",
]
TINY_DATA_OVERRIDES = [
    "dataloader.train.dataset=shapes_train_mini",
    "dataloader.test.dataset.names=shapes_val_mini",
]


def load_train_net():
    """``train_net.py`` (repo root, not a package) imported as a module, once per session."""
    if "train_net" in sys.modules:
        return sys.modules["train_net"]
    spec = importlib.util.spec_from_file_location("train_net", REPO / "train_net.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_net"] = module
    spec.loader.exec_module(module)
    return module


def make_args(*argv):
    """What ``train_net.py`` sees for ``python train_net.py --config-file TINY_CONFIG *argv``."""
    return default_argument_parser().parse_args(["--config-file", TINY_CONFIG, *argv])


def make_cfg(output_dir, *overrides, mini_data=True):
    """The tiny config with ``train.output_dir=output_dir``, an evaluation only at the end
    (detectron2's EvalHook always evaluates after the last iteration) and ``overrides`` last."""
    base = TINY_MODEL_OVERRIDES + (TINY_DATA_OVERRIDES if mini_data else [])
    base += [f"train.output_dir={output_dir}", "train.eval_period=0"]
    return apply_overrides(LazyConfig.load(TINY_CONFIG), base + list(overrides))


def run_train(cfg, *argv):
    """``train_net.do_train`` in this process, seeded like ``default_setup`` does (``train.seed``)."""
    seed_all_rng(cfg.train.seed)
    return load_train_net().do_train(make_args(*argv), cfg)


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for the module's tests. On a small shared CPU machine two OpenMP threads
    are far slower once other jobs run (measured on 2 cores at load 10: 9.5 s per training step of
    the tiny model with 2 threads, 0.34 s with 1)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shapes_mini():
    """Register (and generate once, under the cached root) the mini splits; returns their names."""
    names = detr_plus.data.register_shapes(splits=MINI_SPLITS)
    for name in names:
        detr_plus.data.ensure_shapes_generated(name)
    return names


@pytest.fixture(scope="session")
def tiny():
    """The helpers above, for test modules (which should not import ``conftest`` themselves)."""
    return SimpleNamespace(
        repo=REPO, config=TINY_CONFIG, model_overrides=list(TINY_MODEL_OVERRIDES),
        data_overrides=list(TINY_DATA_OVERRIDES), make_args=make_args, make_cfg=make_cfg, run_train=run_train,
    )


@pytest.fixture(scope="session")
def train_net():
    return load_train_net()


@pytest.fixture
def tiny_cfg(shapes_mini, tmp_path):
    """``tiny_cfg(*overrides, output_dir=None)``: the tiny config writing into ``tmp_path``."""

    def _make(*overrides, output_dir=None):
        return make_cfg(output_dir or tmp_path, *overrides)

    return _make
