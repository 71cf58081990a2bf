"""detr_plus: DETR training methods as plug-ins on one shared Deformable-DETR (Detectron2 project)."""
# The compatibility layer must run before any detectron2 submodule is imported (see compat.py).
from .compat import patch_detectron2 as _patch_detectron2

_patch_detectron2()

__version__ = "0.1.0"
