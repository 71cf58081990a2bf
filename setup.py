#!/usr/bin/env python
"""detr_plus: DETR training methods on a shared Deformable-DETR core (a Detectron2 project).

torch, torchvision and detectron2 are deliberately not listed in install_requires, so that
existing builds (CUDA wheels, detectron2 from source) are kept; `make venv` installs them.
"""
from setuptools import find_packages, setup

# The folders projects/ and benchmarks/ are installed under distinct names (import
# detr_plus_projects.mr_detr.modeling, detr_plus_benchmarks.timing), never as the generic
# top-level packages `projects` / `benchmarks`.
PACKAGE_DIRS = {"detr_plus": "detr_plus", "detr_plus_projects": "projects", "detr_plus_benchmarks": "benchmarks"}


def packages_under(name, folder):
    return [name] + [f"{name}.{sub}" for sub in find_packages(folder)]


setup(
    name="detr_plus",
    version="0.1.0",
    description="DETR training methods as plug-ins on one Deformable-DETR (Detectron2 project)",
    packages=[pkg for name, folder in PACKAGE_DIRS.items() for pkg in packages_under(name, folder)],
    package_dir={name: folder for name, folder in PACKAGE_DIRS.items() if name != folder},
    python_requires=">=3.9",
    install_requires=["fvcore", "pycocotools", "scipy", "tqdm", "matplotlib"],
    extras_require={"export": ["onnx", "onnxruntime"]},  # tools/export_onnx.py, tools/demo.py --onnx
)
