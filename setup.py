#!/usr/bin/env python
"""detr_plus: DETR training methods on a shared Deformable-DETR core (a Detectron2 project).

torch, torchvision and detectron2 are deliberately not listed in install_requires, so that
existing builds (CUDA wheels, detectron2 from source) are kept; `make venv` installs them.
"""
from setuptools import find_packages, setup

setup(
    name="detr_plus",
    version="0.1.0",
    description="DETR training methods as plug-ins on one Deformable-DETR (Detectron2 project)",
    packages=find_packages(include=["detr_plus*", "projects*"]),
    python_requires=">=3.9",
    install_requires=["fvcore", "pycocotools", "scipy", "tqdm", "matplotlib"],
)
