"""The one map between wrapped and logical names.

An injected model keeps each adapted module as ``<target>.base_layer`` inside a wrapper that also
holds ``<target>.spt_units.<adapter>.<param>``. Users, checkpoints and fingerprints know the
*logical* names: the backbone's own, with the wrapper seen through and the units left out. Every
module that needs to convert between the two (core, files, PEFT glue, the integrations) uses the
constants and functions here, so the rule lives in one place.

* logical module name: ``layers.0.residual_group`` (what the user targets);
* wrapped state-dict key: ``layers.0.residual_group.base_layer.conv.weight``;
* unit parameter (model): ``layers.0.residual_group.spt_units.default.encoder.0.weight``;
* unit key (delta file): ``layers.0.residual_group.spt_unit.encoder.0.weight`` (no adapter name);
* prior student (a distilled prior; one per adapter, on the SPTModel itself):
  parameter ``spt_students.default.body.0.weight``, delta-file key ``spt_student.body.0.weight``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn

from ..errors import TargetError

#: the attribute under which a wrapper keeps the original module (peft's name)
BASE_LAYER = "base_layer"
#: the ModuleDict attribute holding one unit per adapter name
UNITS_ATTR = "spt_units"
#: prefix shared by every SPT attribute; decides what trains and what is saved
UNIT_PREFIX = "spt_"
#: the segment separating target and parameter in a delta file's keys
FILE_UNIT_SEGMENT = "spt_unit"
#: the SPTModel attribute (a ModuleDict) holding one prior student per distilled adapter
STUDENT_ATTR = "spt_students"
#: the first segment of a prior student's keys in a delta file
FILE_STUDENT_SEGMENT = "spt_student"


def is_wrapper(module: nn.Module) -> bool:
    """Whether ``module`` is an SPT wrapper (core's SPTLayer or the PEFT layer built on it)."""
    return isinstance(module, nn.Module) and BASE_LAYER in module._modules and UNITS_ATTR in module._modules


def see_through(module: nn.Module) -> nn.Module:
    """The original module behind a wrapper (the module itself otherwise)."""
    if not is_wrapper(module):
        return module
    base = module._modules[BASE_LAYER]
    assert base is not None  # is_wrapper checked that it is there
    return base


def logical_named_modules(root: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Named modules as the user knows them: a wrapper stands for its original module (listed
    under the target's name, itself the wrapper), and SPT units are not listed."""
    seen: set[int] = set()

    def walk(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
        for child_name, child in module._modules.items():
            if child is None or id(child) in seen:
                continue
            seen.add(id(child))
            full = prefix + child_name
            yield full, child
            yield from walk(see_through(child), full + ".")

    yield from walk(root, "")


def find_logical_module(root: nn.Module, name: str) -> nn.Module | None:
    """The module at logical name ``name`` (through wrappers), or None."""
    module = root
    for part in name.split("."):
        child = see_through(module)._modules.get(part)
        if child is None:
            return None
        module = child
    return module


def get_logical_module(root: nn.Module, name: str) -> nn.Module:
    """The module at logical name ``name``; :class:`TargetError` if there is none."""
    module = find_logical_module(root, name)
    if module is None:
        raise TargetError(f"model {type(root).__name__} has no module {name!r}")
    return module


def is_unit_key(key: str) -> bool:
    """Whether a state-dict key (wrapped naming) belongs to an SPT unit or a prior student."""
    parts = key.split(".")
    return UNITS_ATTR in parts or STUDENT_ATTR in parts


def logical_key(key: str) -> str:
    """A wrapped state-dict key as the backbone's checkpoint names it (``base_layer`` removed)."""
    return ".".join(p for p in key.split(".") if p != BASE_LAYER)


def logical_state(module: nn.Module, params_only: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """(logical name, tensor) of the backbone's own weights: units dropped, wrappers seen through."""
    items = module.named_parameters() if params_only else module.state_dict(keep_vars=True).items()
    for name, tensor in items:
        if not is_unit_key(name):
            yield logical_key(name), tensor


def unit_file_key(target: str, param: str) -> str:
    """``<target>.spt_unit.<param>``: the key of a unit tensor in a delta file."""
    return f"{target}.{FILE_UNIT_SEGMENT}.{param}"


def split_unit_file_key(key: str) -> tuple[str, str] | None:
    """(target, param) of a delta-file key, or None if it is not one."""
    marker = f".{FILE_UNIT_SEGMENT}."
    if marker not in key:
        return None
    target, param = key.split(marker, 1)
    return (target, param) if target and param else None


def unit_param_name(target: str, adapter: str, param: str) -> str:
    """``<target>.spt_units.<adapter>.<param>``: a unit parameter's name inside the model."""
    return f"{target}.{UNITS_ATTR}.{adapter}.{param}"


def student_file_key(param: str) -> str:
    """``spt_student.<param>``: the key of a prior-student tensor in a delta file."""
    return f"{FILE_STUDENT_SEGMENT}.{param}"


def split_student_file_key(key: str) -> str | None:
    """The student parameter name of a delta-file key, or None if it is not a student key."""
    head, _, param = key.partition(".")
    return param if head == FILE_STUDENT_SEGMENT and param else None


def is_adapter_file_key(key: str) -> bool:
    """Whether a delta-file key names an SPT tensor (a unit's or the prior student's)."""
    return split_unit_file_key(key) is not None or split_student_file_key(key) is not None
