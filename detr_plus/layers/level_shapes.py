"""The (H_l, W_l) of the feature levels, on the device and on the host, made once per batch.

The deformable attention, the encoder's reference points and the two-stage proposals need the
level sizes as Python ints (loops, views, kernel sizes) and as a device tensor (the sampling
arithmetic). Reading them back from the device tensor (``.tolist()``) in every attention call makes
the host wait for the GPU each time; :func:`level_shapes_tensor` makes the device tensor from the
ints the feature maps' shapes already give, and :func:`level_sizes` returns those ints for it.
"""
import collections
import weakref
from typing import Sequence, Tuple

import torch

LevelSizes = Tuple[Tuple[int, int], ...]
_HOST_COPIES: "collections.OrderedDict[int, Tuple[weakref.ref, LevelSizes]]" = collections.OrderedDict()
_MAX_ENTRIES = 64  # a few batches' worth; older entries are dropped (the lookup then reads the tensor)


def level_shapes_tensor(sizes: Sequence[Sequence[int]], device) -> torch.Tensor:
    """(L, 2) long tensor of ``sizes`` on ``device``, its host copy remembered for :func:`level_sizes`.
    On CUDA the copy goes through pinned memory without blocking (a pageable copy waits for the GPU)."""
    if torch.jit.is_tracing():  # the sizes are traced values (0-d tensors): kept, so the exported graph takes any size
        host_sizes = tuple((h, w) for h, w in sizes)
        tensor = torch.stack([torch.stack([h, w]) for h, w in sizes]).long()
    else:
        host_sizes = tuple((int(h), int(w)) for h, w in sizes)
        tensor = torch.tensor(host_sizes, dtype=torch.long)
        if torch.device(device).type == "cuda":
            tensor = tensor.pin_memory().to(device, non_blocking=True)
        else:
            tensor = tensor.to(device)
    _HOST_COPIES[id(tensor)] = (weakref.ref(tensor), host_sizes)
    while len(_HOST_COPIES) > _MAX_ENTRIES:
        _HOST_COPIES.popitem(last=False)
    return tensor


def level_sizes(spatial_shapes: torch.Tensor) -> LevelSizes:
    """The level sizes as Python ints: the remembered host copy when ``spatial_shapes`` was made by
    :func:`level_shapes_tensor`, else read from the tensor."""
    entry = _HOST_COPIES.get(id(spatial_shapes))
    if entry is not None and entry[0]() is spatial_shapes:
        return entry[1]
    return tuple((int(h), int(w)) for h, w in spatial_shapes.tolist())
