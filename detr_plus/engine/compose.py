"""Several methods in one config: each method's config delta applied to one model (issue #25).

A method's delta is a dict of the model keys it sets (``projects/<method>/configs/models/*.py``).
``compose_methods(model, mr_detr=_mr_detr, od_detr=_od_detr)`` applies them all:

* the extension slots ``variants``, ``group_sources``, ``extra_output_criteria`` and ``heads`` are
  merged by name (``merge_named``: the same name from two methods is an error naming both);
* a plain dict (no ``_target_``) goes into the config node of the same key (e.g. QR-DETR's
  ``transformer.decoder.layer_wrapper``); a list (``train.hooks``) is extended;
* a key that another method set to a different value, or a node above or below such a key,
  stops with an error naming both methods and the keys: the methods conflict (LoRA-DETR and
  OD-DETR each bring their own class loss).
"""
import re
from typing import Dict, Mapping

from detectron2.config import LazyCall as L
from omegaconf import DictConfig, ListConfig, OmegaConf

SLOTS = ("variants", "group_sources", "extra_output_criteria", "heads")


def named(**modules) -> Dict:
    """``{name: module}`` for an extension slot in a LazyConfig: ``model.heads = L(named)(iou=L(IoUHead)(...))``
    (detectron2 v0.6 instantiates the calls inside a call's arguments, not inside a plain dict)."""
    return dict(modules)


def merge_named(**parts: Mapping) -> Dict:
    """The union of several methods' ``{name: module}`` dicts (one slot of ``DeformableDETR``)."""
    merged, owner = {}, {}
    for method, named in parts.items():
        for name, module in dict(named or {}).items():
            if name in merged:
                raise ValueError(f"{owner[name]} and {method} both add {name!r} (a loss prefix): rename one of them")
            merged[name], owner[name] = module, method
    return merged


def _one_level_deeper(node):
    """``node`` (a config value) with every relative interpolation (``${..x}``) pointing one level
    further up, for the node moves one level down (into a ``merge_named`` call)."""
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, str):
        return re.sub(r"\$\{(\.+)", lambda m: "${" + m.group(1) + ".", node)
    if isinstance(node, dict):
        return {k: _one_level_deeper(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_one_level_deeper(v) for v in node]
    return node


def _is_call(value) -> bool:
    return isinstance(value, (dict, DictConfig)) and "_target_" in value


def compose_methods(node, path: str = "model", **methods: Mapping):
    """``node`` (a config node, e.g. ``cfg.model`` or ``cfg.train``) with every method's delta of
    ``methods`` (``name=delta``) applied; see the module docstring. Returns ``node``."""
    owners: Dict[str, str] = {}
    for method, delta in methods.items():
        _apply(node, delta, method, owners, path)
    return node


def _other_owner(owners: Dict[str, str], where: str, method: str):
    """(path, method) of another method's setting at ``where``, above it or below it, else None."""
    for path, owner in owners.items():
        if owner != method and (path == where or where.startswith(path + ".") or path.startswith(where + ".")):
            return path, owner
    return None


def _apply(node, delta: Mapping, method: str, owners: Dict[str, str], path: str):
    for key, value in delta.items():
        where = f"{path}.{key}"
        current = node.get(key) if key in node else None
        if key in SLOTS and path == "model":
            if value is None:
                continue
            if not (_is_call(current) and current["_target_"] is merge_named):
                parts = {} if current is None else {owners.get(where, "base"): _one_level_deeper(current)}
                node[key] = L(merge_named)(**parts)
            node[key][method] = _one_level_deeper(value)
            continue
        if isinstance(value, (list, ListConfig)) and isinstance(current, (list, ListConfig)):
            node[key] = list(current) + list(value)
            continue
        other = _other_owner(owners, where, method)
        into_node = isinstance(value, Mapping) and not _is_call(value) and isinstance(current, DictConfig)
        if into_node and (other is None or other[0].startswith(where + ".")):
            _apply(current, value, method, owners, where)  # keys inside the node: checked one by one
            continue
        if other is not None and not (other[0] == where and current == value):
            what = f"both set {where}" if other[0] == where else f"{other[1]} sets {other[0]}, {method} sets {where}"
            raise ValueError(f"{other[1]} and {method} conflict: {what} (to different values); they cannot be combined as they are")
        node[key] = value
        owners[where] = method
