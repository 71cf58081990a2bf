"""Count the calls that make the host wait for the GPU, on any device (a CPU run included).

On CUDA, reading a tensor's value on the host (``.item()``, ``.tolist()``, ``.cpu()``, ``bool(t)``),
sizing an output by the data (``nonzero``, boolean-mask indexing, ``bincount``, ``unique``,
``repeat_interleave`` without ``output_size``) stalls the host until the queued kernels finish, and
the GPU then idles while Python catches up. ``torch.cuda.set_sync_debug_mode`` reports them only on a
GPU; :class:`HostSyncCounter` finds the same calls by their names, so a CPU test can count what a
training step would do on a GPU and point at the lines (``tests/test_host_syncs.py``).

Not counted: calls from ``torch/optim`` (the optimizers' step counters are host tensors), ``.to(device)`` (in our code it moves host data to the device: asynchronous from
pinned memory) and ``.numpy()`` (only ever after ``.cpu()``, which is counted).
"""
import collections
import os
import sys
from typing import Counter, Optional

import torch
from torch.overrides import TorchFunctionMode

#: Tensor methods / torch functions that read device values on the host or size an output by them.
SYNCING = frozenset({
    "item", "tolist", "cpu", "__bool__", "__int__", "__float__", "__index__",
    "nonzero", "argwhere", "masked_select", "bincount", "unique", "unique_consecutive",
})
#: Calls made under this folder read host tensors by design: the optimizers' step counters.
HOST_BY_DESIGN = os.sep + os.path.join("torch", "optim") + os.sep
INDEXING = frozenset({"__getitem__", "__setitem__", "index_put", "index_put_"})


def _has_bool_index(index) -> bool:
    items = index if isinstance(index, (tuple, list)) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool and i.dim() > 0 for i in items)


def _is_sync(name: str, args, kwargs) -> bool:
    if name in SYNCING:
        return True
    if name in INDEXING:
        return len(args) > 1 and _has_bool_index(args[1])
    if name == "repeat_interleave":
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
        return isinstance(repeats, torch.Tensor) and repeats.numel() > 1 and kwargs.get("output_size") is None
    if name == "where":
        return len(args) + len(kwargs) == 1
    return False


class HostSyncCounter(TorchFunctionMode):
    """``with HostSyncCounter(roots) as counter: step()``; then ``counter.total`` and
    ``counter.sites`` ("file:line function (call)" of the innermost frame under one of the folders
    ``roots``, e.g. ``detr_plus/`` and ``projects/``, named from the folder -> count). Calls from elsewhere (torch, detectron2) are attributed to the line of
    ours that made them."""

    def __init__(self, roots=()):
        super().__init__()
        self.roots = tuple(os.path.abspath(r) + os.sep for r in roots)
        self.sites: Counter[str] = collections.Counter()

    @property
    def total(self) -> int:
        return sum(self.sites.values())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if _is_sync(name, args, kwargs):
            site = self._site(name)
            if site is not None:
                self.sites[site] += 1
        return func(*args, **kwargs)

    def _site(self, name: str) -> Optional[str]:
        frame = sys._getframe(2)
        while frame is not None:
            path = os.path.abspath(frame.f_code.co_filename)
            if HOST_BY_DESIGN in path:
                return None
            root = next((r for r in self.roots if path.startswith(r)), None)
            if root is not None and not path.endswith("host_syncs.py"):
                relative = os.path.relpath(path, os.path.dirname(root.rstrip(os.sep)))  # "detr_plus/...", "projects/..."
                return f"{relative}:{frame.f_lineno} {frame.f_code.co_name} ({name})"
            frame = frame.f_back
        return f"<outside> ({name})"

    def report(self) -> str:
        lines = [f"{count:5d}  {site}" for site, count in self.sites.most_common()]
        return "\n".join([f"{self.total} host syncs"] + lines)
