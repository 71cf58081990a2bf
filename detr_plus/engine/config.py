"""LazyConfig helpers: overrides that refuse unknown keys, and device resolution."""
import difflib

import torch
from detectron2.config import LazyConfig
from omegaconf import DictConfig, ListConfig


def _has_key(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        if isinstance(node, DictConfig) and part in node:
            node = node[part]
        elif isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def _all_keys(node, prefix=""):
    if isinstance(node, DictConfig):
        for k in node.keys():
            yield from _all_keys(node[k], f"{prefix}{k}.")
    yield prefix.rstrip(".")


def _python_none_as_null(item):
    """``key=None`` -> ``key=null``: Detectron2 parses override values with Hydra's grammar, where
    ``None`` is the *string* "None" (its null is ``null``), while our configs are Python and say
    None; a model would get "None" where it expects an object and fail far from the command line."""
    key, value = item.split("=", 1)
    return f"{key}=null" if value.strip() == "None" else item


def apply_overrides(cfg, overrides):
    """``LazyConfig.apply_overrides`` that raises ``KeyError`` for a key the config does not have
    (OmegaConf would silently create it, and a typo would train with the default), and reads a
    value of ``None`` as Python's None, like ``null``."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"Config override {item!r} is not of the form key=value")
        key = item.split("=", 1)[0].lstrip("+~")
        if not item.startswith("+") and not _has_key(cfg, key):
            close = difflib.get_close_matches(key, list(_all_keys(cfg)), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"Unknown config key {key!r} in override {item!r}{hint} (prefix with '+' to add a new key)")
    return LazyConfig.apply_overrides(cfg, [_python_none_as_null(o.lstrip("+")) for o in overrides])


def resolve_device(device):
    """``"auto"``/None -> "cuda" if available else "cpu" (never a hard-coded "cuda")."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
