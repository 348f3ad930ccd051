"""A PyTorch file's tensors, read without running any code the file names.

`torch.load(weights_only=True)` refuses a file that names any class outside its allow-list, and files people
have do: timm's CheckpointSaver keeps its `argparse.Namespace` under `args`, PyTorch Lightning 1.0 keys
`callbacks` by the callback's class (so reading it normally needs `pytorch_lightning` installed), and
torchxrayvision releases pickle whole modules of its own classes. `load` tries weights_only first; when that
refuses, it reads the file again with an unpickler that resolves only torch's tensor rebuilders, storages,
dtypes and plain containers, and turns every other class or function the file names into a StandIn: an
object that keeps the arguments and state it is given and runs nothing. The tensors come out as torch would
load them; the rest is inert data (`held_names` lists what stood in).
"""
from __future__ import annotations

import pickle
import types
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

from ..errors import UserError

# Globals resolved to the real object: tensor rebuilders (what weights_only itself allows) and containers.
# Storage classes are resolved by torch.load before they reach the unpickler.
_REAL = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
    **{("torch._utils", name): getattr(torch._utils, name) for name in (
        "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
        "_rebuild_parameter_with_state") if hasattr(torch._utils, name)},
}


class StandIn(dict):
    """What a file's class or function becomes: calling or building it records arguments and state, nothing
    else. A dict subclass so that pickled dict subclasses (Lightning's AttributeDict) keep their items."""
    qualified_name = "?"

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.args, self.state, self.items_list = args, None, []

    def __setstate__(self, state):
        self.state = state

    def append(self, item):
        self.items_list.append(item)

    def extend(self, items):
        self.items_list.extend(items)

    def __hash__(self):
        return id(self)

    def __repr__(self):
        return f"<stand-in for {self.qualified_name}>"


class _Unpickler(pickle.Unpickler):
    stood_in: set = set()

    def find_class(self, module, name):
        real = _REAL.get((module, name))
        if real is not None:
            return real
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        _Unpickler.stood_in.add(f"{module}.{name}")
        return type(name, (StandIn,), {"qualified_name": f"{module}.{name}", "__module__": "cxrlib.stand_in"})


def _load(file, **kwargs):
    return _Unpickler(file, **kwargs).load()


# What torch.load takes as pickle_module: its Unpickler (torch subclasses it to resolve storages) and load.
TENSORS_ONLY = types.ModuleType("cxrlib_tensors_only")
TENSORS_ONLY.Unpickler = _Unpickler
TENSORS_ONLY.load = _load


def load(path) -> tuple[object, list[str]]:
    """(what the file holds, the names that stood in: [] when torch's weights_only read it). Zip files (torch
    1.6 and later) are memory-mapped, so reading a large file for its keys and shapes costs little."""
    path = Path(path)
    mmap = zipfile.is_zipfile(path)   # pre-1.6 files (torchvision's model zoo) cannot be mapped
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap), []
    except pickle.UnpicklingError:
        pass
    _Unpickler.stood_in = set()
    with warnings.catch_warnings():   # a pre-1.6 pickled module carries its classes' source, which stand-ins lack
        warnings.filterwarnings("ignore", message="Couldn't retrieve source code")
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=TENSORS_ONLY, mmap=mmap)
    return obj, sorted(_Unpickler.stood_in)


def read_file(path) -> tuple[object, list[str]]:
    """load, a file that is not a readable PyTorch file (truncated, empty, something else) refused in one line."""
    try:
        return load(path)
    except Exception as e:   # what torch says, in one line naming the file
        raise UserError(f"weights: {path} is not a readable PyTorch file ({type(e).__name__}: {e})") from None


def read_safetensors(path) -> dict:
    """A safetensors file's tensors, a file that is not one refused in one line."""
    from safetensors.torch import load_file  # lazy: only safetensors files need it

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:
        raise UserError(f"weights: {path} is not a readable safetensors file ({e})") from None


def is_pickled_module(obj) -> bool:
    """A whole nn.Module pickled with its class (torchxrayvision's DenseNet releases): its state holds _modules."""
    return isinstance(obj, StandIn) and isinstance(obj.state, dict) and "_modules" in obj.state


def attribute(obj, name: str, default=None):
    """An attribute of a pickled object (its state), a module's buffers and parameters included."""
    state = obj.state if isinstance(obj, StandIn) and isinstance(obj.state, dict) else {}
    for where in (state, state.get("_buffers") or {}, state.get("_parameters") or {}):
        if name in where:
            return where[name]
    return default


def module_state_dict(obj, prefix: str = "") -> dict:
    """What Module.state_dict() returns for a pickled module, read from its pickled state: parameters, then
    persistent buffers, then each child's, by dotted name (a pickle from torch < 1.6 has no non-persistent set)."""
    state = obj.state
    out = {}
    for name, value in (state.get("_parameters") or {}).items():
        if value is not None:
            out[prefix + name] = value.detach() if isinstance(value, torch.nn.Parameter) else value
    skip = state.get("_non_persistent_buffers_set") or set()
    for name, value in (state.get("_buffers") or {}).items():
        if value is not None and name not in skip:
            out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            out.update(module_state_dict(child, f"{prefix}{name}."))
    return out
