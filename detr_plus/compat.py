"""Compatibility fixes that let detectron2 v0.6 run on today's numpy / Pillow / torch, on CPU.

``detr_plus/__init__.py`` calls :func:`patch_detectron2` before any detectron2 submodule is
imported.  Each fix names the detectron2 v0.6 ``file:line`` it covers, and each one checks first,
so it is a no-op where the installed detectron2 (e.g. a recent build from GitHub source, or one
with its compiled extension) and its dependencies already behave:

* ``detectron2._C`` (the C++ extension) is missing when detectron2 was installed without it
  (see ``tools/install_detectron2.py``).  A stub module takes its place, so importing detectron2
  works, and using an op that needs it raises :class:`MissingD2ExtensionError`.
  :data:`HAS_D2_EXTENSION` tells whether the real extension is there; pass
  ``use_fast_impl=HAS_D2_EXTENSION`` to ``COCOEvaluator``.  Without the extension, the
  evaluator's C++-backed ``COCOeval_opt`` is replaced by pycocotools' ``COCOeval`` anyway.
* ``PIL.Image.LINEAR`` (removed in Pillow 10) is restored as ``PIL.Image.BILINEAR``.
* numpy's removed aliases ``np.int/np.float/np.bool/np.str`` are restored as the builtins.
* torch >= 2.6 defaults ``torch.load(weights_only=True)``, which refuses detectron2/fvcore
  training checkpoints holding numpy arrays or other Python objects.  ``torch.load`` itself is
  left alone; only fvcore's ``Checkpointer._load_file`` (used by ``DetectionCheckpointer`` for
  ``.pth`` files) loads with ``weights_only=False``.  Only load checkpoints you trust, as with
  any pickle (detectron2 already unpickles ``.pkl`` files without restriction).
"""
import importlib.util
import sys
import types

__all__ = ["HAS_D2_EXTENSION", "MissingD2ExtensionError", "patch_detectron2"]


class MissingD2ExtensionError(AttributeError):
    """Raised when code uses an op of detectron2's C++ extension and it was not built."""


class _MissingExtension(types.ModuleType):
    """Stands in for ``detectron2._C``; any op raises :class:`MissingD2ExtensionError`."""

    def __init__(self, reason):
        super().__init__("detectron2._C", "Stub for detectron2's missing C++ extension.")
        self._reason = reason

    # utils/collect_env.py:118-120 (run by engine.default_setup) calls these.
    def get_compiler_version(self):
        return "none: detectron2 was installed without its C++ extension"

    get_cuda_version = get_compiler_version

    def has_cuda(self):
        return False

    def __getattr__(self, op):
        if op.startswith("__"):  # keep introspection (copy, pickle, inspect, pytest) quiet
            raise AttributeError(op)
        raise MissingD2ExtensionError(
            f"detectron2 was installed without its C++ extension; detectron2._C.{op} is "
            f"unavailable ({self._reason}). Build detectron2 from source to use it."
        )


def _probe_extension():
    """Import the real ``detectron2._C``; returns (available, reason it is not)."""
    if importlib.util.find_spec("detectron2") is None:
        return False, "detectron2 is not installed"
    import torch  # noqa: F401  (the compiled extension links against torch's libraries)

    if isinstance(sys.modules.get("detectron2._C"), _MissingExtension):
        return False, sys.modules["detectron2._C"]._reason
    try:
        import detectron2._C  # noqa: F401
    except (ImportError, OSError) as e:
        return False, f"{type(e).__name__}: {e}"
    return True, ""


HAS_D2_EXTENSION, _EXTENSION_ERROR = _probe_extension()
_PATCHED = False


class _PatchAfterExec:
    """Loader wrapper that calls ``fn(module)`` right after the module's code has run."""

    def __init__(self, loader, fn):
        self._loader, self._fn = loader, fn

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        self._fn(module)

    def __getattr__(self, name):  # get_source, get_code, is_package, ...
        return getattr(self._loader, name)


class _PostImportHook:
    """Meta-path finder: patch module ``name`` when it is first imported (one-shot)."""

    def __init__(self, name, fn):
        self.name, self.fn = name, fn

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchAfterExec(spec.loader, self.fn)
        return spec


def _after_import(name, fn):
    """Call ``fn(module)`` now if ``name`` is already imported, else right after its import."""
    if name in sys.modules:
        fn(sys.modules[name])
    else:
        sys.meta_path.insert(0, _PostImportHook(name, fn))


def _use_pycocotools_cocoeval(coco_evaluation):
    # evaluation/coco_evaluation.py:22,579 (COCOeval_opt needs _C): like detectron2 main's fallback
    from pycocotools.cocoeval import COCOeval

    if coco_evaluation.COCOeval_opt is not COCOeval:
        coco_evaluation.COCOeval_opt = COCOeval


def _patch_numpy_aliases():
    import numpy as np

    # data/build.py:171, structures/masks.py:36, evaluation/sem_seg_evaluation.py:90 use them.
    for name, builtin in (("int", int), ("float", float), ("bool", bool), ("str", str)):
        if name not in vars(np):  # (hasattr would trigger numpy's FutureWarning for np.str)
            setattr(np, name, builtin)


def _patch_pillow():
    import PIL.Image

    # data/transforms/transform.py:46 (ExtentTransform default interp=Image.LINEAR).
    if not hasattr(PIL.Image, "LINEAR"):
        PIL.Image.LINEAR = PIL.Image.BILINEAR


def _patch_checkpoint_loading():
    import torch

    version = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    if version < (2, 6):  # older torch.load already defaults to weights_only=False
        return
    from fvcore.common.checkpoint import Checkpointer

    if getattr(Checkpointer._load_file, "_detr_plus_compat", False):
        return

    # checkpoint/detection_checkpoint.py:88 -> fvcore/common/checkpoint.py:252 (torch.load)
    def _load_file(self, f):
        return torch.load(f, map_location=torch.device("cpu"), weights_only=False)

    _load_file._detr_plus_compat = True
    _load_file.__doc__ = Checkpointer._load_file.__doc__
    Checkpointer._load_file = _load_file


def patch_detectron2():
    """Apply all fixes (idempotent). Call before importing any detectron2 submodule."""
    global _PATCHED
    if _PATCHED:
        return
    _patch_numpy_aliases()
    _patch_pillow()
    if importlib.util.find_spec("detectron2") is not None:
        if not HAS_D2_EXTENSION:
            # layers/deform_conv.py:11, layers/roi_align_rotated.py:8, layers/rotated_boxes.py:4,
            # evaluation/fast_eval_api.py:8 do `from detectron2 import _C` at import time.
            import detectron2

            stub = sys.modules.get("detectron2._C")
            if not isinstance(stub, _MissingExtension):
                stub = _MissingExtension(_EXTENSION_ERROR)
                sys.modules["detectron2._C"] = stub
            detectron2._C = stub
            _after_import("detectron2.evaluation.coco_evaluation", _use_pycocotools_cocoeval)
        _patch_checkpoint_loading()
    _PATCHED = True
