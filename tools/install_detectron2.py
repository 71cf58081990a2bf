#!/usr/bin/env python
"""Install detectron2 (pure Python, no C++ extension) into the running interpreter.

Usage:  python tools/install_detectron2.py        (the Makefile runs it with .venv/bin/python)

* If ``import detectron2`` already works (e.g. a build from GitHub source), nothing is done.
* Otherwise the sdist of ``pb1-detectron2==0.6`` (a byte-identical republish of detectron2
  v0.6's Python code on PyPI) is downloaded, patched and installed as the distribution
  ``detectron2``:
    - its sdist lacks ``detectron2/layers/csrc``, so the C++ extension is dropped
      (``ext_modules=[]``); ``detr_plus.compat`` makes the rest of detectron2 work without it;
    - its ``get_model_zoo_configs()`` only looks at a top-level ``configs/`` dir (absent from
      the sdist) and would silently drop the model-zoo configs that the sdist ships under
      ``detectron2/model_zoo/configs``: we list them as package data instead;
    - the stale ``pb1_detectron2.egg-info`` (whose SOURCES.txt names absolute paths from the
      publisher's machine) is removed.
  pip >= 26 refuses to download this sdist (its ``[all]`` extra declares a direct-URL
  dependency), so it is downloaded by pip 25.2 put in a temporary folder, from the package index
  pip is configured with, and checked against its sha256.
  Set ``D2_SDIST=/path/to/pb1-detectron2-0.6.tar.gz`` to use a local copy (offline).

torch must be installed first (detectron2's setup.py imports it); the build uses
``--no-build-isolation`` and needs ``setuptools>=70.1,<81`` (v0.6 imports pkg_resources).
"""
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

SDIST_NAME = "pb1-detectron2-0.6.tar.gz"
SDIST_REQ = "pb1-detectron2==0.6"
# The last pip that downloads distributions whose extras declare direct-URL dependencies.
DOWNLOAD_PIP_REQ = "pip==25.2"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
SETUPTOOLS_REQ = "setuptools>=70.1,<81"

# (old, new) textual edits of the sdist's setup.py; each `old` must occur exactly once.
SETUP_PY_EDITS = [
    ('name="pb1-detectron2",', 'name="detectron2",'),
    (
        'package_data={"detectron2.model_zoo": get_model_zoo_configs()},',
        'package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},',
    ),
    ("ext_modules=get_extensions(),", "ext_modules=[],"),
    ('cmdclass={"build_ext": torch.utils.cpp_extension.BuildExtension},', ""),
]


def log(msg):
    print(f"[install_detectron2] {msg}", flush=True)


def run(cmd, **kw):
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, **kw)


def python_ok(code):
    """Run `code` in a fresh interpreter outside the repo; True if it exits 0."""
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=tempfile.gettempdir(), capture_output=True, text=True
    )
    return r.returncode == 0


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_sdist(dst_dir):
    local = os.environ.get("D2_SDIST")
    path = os.path.join(dst_dir, SDIST_NAME)
    if local:
        log(f"using local sdist {local}")
        shutil.copy(local, path)
    else:
        pip_dir = os.path.join(dst_dir, "download-pip")
        run([sys.executable, "-m", "pip", "install", "-q", "--target", pip_dir, DOWNLOAD_PIP_REQ])
        log(f"downloading the sdist of {SDIST_REQ} with {DOWNLOAD_PIP_REQ}")
        env = dict(os.environ, PYTHONPATH=pip_dir)
        run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-build-isolation",
             "--no-binary", ":all:", SDIST_REQ, "-d", dst_dir], env=env)
    digest = sha256(path)
    if digest != SDIST_SHA256:
        sys.exit(f"sha256 mismatch for {SDIST_NAME}: got {digest}, expected {SDIST_SHA256}")
    return path


def patch_source(src):
    setup_py = os.path.join(src, "setup.py")
    with open(setup_py) as f:
        text = f.read()
    for old, new in SETUP_PY_EDITS:
        if text.count(old) != 1:
            sys.exit(f"unexpected setup.py in sdist: {old!r} found {text.count(old)} times")
        text = text.replace(old, new)
    with open(setup_py, "w") as f:
        f.write(text)
    shutil.rmtree(os.path.join(src, "pb1_detectron2.egg-info"), ignore_errors=True)
    configs = os.path.join(src, "detectron2", "model_zoo", "configs")
    if not os.path.isdir(configs):
        sys.exit("sdist has no detectron2/model_zoo/configs")


def main():
    if python_ok("import detectron2"):
        out = subprocess.run(
            [sys.executable, "-c", "import detectron2; print(detectron2.__version__, detectron2.__file__)"],
            cwd=tempfile.gettempdir(), capture_output=True, text=True,
        ).stdout.strip()
        log(f"detectron2 already importable ({out}); keeping it")
        return
    if not python_ok("import torch"):
        sys.exit("install torch first (detectron2's setup.py imports it)")
    if not python_ok(
        "import setuptools, wheel; v = tuple(int(x) for x in setuptools.__version__.split('.')[:2]); "
        "assert (70, 1) <= v < (81, 0)"
    ):
        run([sys.executable, "-m", "pip", "install", "-q", SETUPTOOLS_REQ, "wheel"])

    with tempfile.TemporaryDirectory(prefix="d2-build-") as tmp:
        sdist = fetch_sdist(tmp)
        with tarfile.open(sdist) as tar:
            if sys.version_info >= (3, 12) or hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:  # pragma: no cover - old Pythons without extraction filters
                tar.extractall(tmp)
        src = os.path.join(tmp, SDIST_NAME[: -len(".tar.gz")])
        patch_source(src)
        run([sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", src])

    check = (
        # (importing detectron2.model_zoo needs detr_plus.compat, so only look at the files)
        "import os, detectron2; d = os.path.dirname(detectron2.__file__); "
        "p = os.path.join(d, 'model_zoo/configs/COCO-Detection/retinanet_R_50_FPN_1x.yaml'); "
        "assert os.path.isfile(p), p"
    )
    if not python_ok(check):
        subprocess.run([sys.executable, "-c", check], cwd=tempfile.gettempdir())
        sys.exit("detectron2 installed but the post-install check failed")
    log("detectron2 v0.6 (Python only, no C++ extension) installed")


if __name__ == "__main__":
    main()
