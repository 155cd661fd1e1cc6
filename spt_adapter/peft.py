"""SPT as a PEFT method (extra ``peft``): ``peft.get_peft_model(model, SPTPeftConfig(...))``.

    import peft, spt_adapter.peft as spt_peft
    pm = peft.get_peft_model(backbone, spt_peft.SPTPeftConfig(target_modules=r"layers\\.\\d+\\.residual_group"))
    out = pm(lq, spt_prior=prior)                  # or: with pm.use_prior(prior): pm(lq)
    # a distilled adapter (SPTConfig.student) makes its own prior: pm(lq), no spt_prior
    pm.save_pretrained("swinir_spt_peft")           # adapter_config.json + adapter_model.safetensors
    pm = peft.PeftModel.from_pretrained(untouched_backbone, "swinir_spt_peft")
    with pm.disable_adapter(): base = pm(lq)        # the backbone's exact output

Importing this module registers SPT with PEFT, once, here and nowhere else. PEFT's
``PeftType`` is a closed enum, so registration adds the member ``SPT`` to it and fills PEFT's
four mapping tables (through ``peft.utils.register_peft_method`` where it exists); it is guarded by
the installed PEFT version (:data:`PEFT_SUPPORTED`, ``peft>=0.21,<0.22``) and fails with a clear
message outside it.

The layers reuse the core: each target is wrapped by :class:`SPTPeftLayer`, a core
:class:`~spt_adapter.core.layer.SPTLayer` (``base_layer`` + ``spt_units``) that is also a PEFT
``BaseTunerLayer``; unit widths come from the core probe pass and are recorded in the config
(``unit_channels``), feature layouts (maps, SwinIR-style tokens) from the core's
:func:`~spt_adapter.core.layer.apply_to_output` and the plugins' layout hook.

A distilled adapter (``student=``, a :class:`~spt_adapter.core.student.PriorStudent`) keeps its
student on the tuner (``SPTPeftModel.spt_students[<adapter>]``, a module of the PeftModel, not of
the backbone): the forward pre-hook runs it on the call's first tensor and feeds its prior to the
units, exactly as :class:`~spt_adapter.SPTModel` does.

File layouts: PEFT keys ``base_model.model.<target>.spt_units.<param>`` (and, for a distilled
adapter, ``base_model.spt_students.<param>``) in ``adapter_model.safetensors``; spt-adapter keys
``<target>.spt_unit.<param>`` (and ``spt_student.<param>``) in a delta file.
:func:`spt_to_peft` and :func:`peft_to_spt` convert between the two; :func:`load_peft_adapter`
loads a PEFT folder as an :class:`~spt_adapter.SPTModel`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, cast

import torch
import torch.nn as nn

from ._io import atomic_write_bytes
from .core import keys
from .core.config import SCHEMA_VERSION, SPTConfig
from .core.layer import PriorState, SPTLayer, make_unit
from .core.model import batch_size, student_logits, student_prior_refusal, validate_prior
from .core.planning import claim_model, plan_injection
from .core.student import PriorStudent
from .core.targets import inspect_targets, select_targets
from .errors import AdapterFileError, ConfigError, PriorError, SPTError, TargetError

#: the PEFT versions this module is written and tested for (the ``peft`` extra's pin): >= 0.21, < 0.22.
#: PEFT < 0.21 strips the adapter name from saved keys only in the second-to-last position
#: (``x.lora_A.default.weight``); an SPT unit is a nested module (``x.spt_units.default.encoder.0.weight``),
#: so those versions would save and reload wrong keys without an error. 0.21 delegates the key
#: mapping to the tuner (``_remove_adapter_name_from_key``), which SPTPeftModel overrides.
PEFT_SUPPORTED = ((0, 21), (0, 22))
PEFT_TYPE_NAME = "SPT"
PREFIX = keys.UNIT_PREFIX
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"
_PEFT_KEY_PREFIX = "base_model.model."
_PEFT_UNIT = f".{keys.UNITS_ATTR}."
_CORE_UNIT = f".{keys.FILE_UNIT_SEGMENT}."
#: a prior student's tensors: ``spt_students.<adapter>.<param>`` on the tuner, which the PeftModel holds as
#: ``base_model``; PEFT saves every module of the tuner but ``model`` under the adapter name
_PEFT_STUDENTS = f".{keys.STUDENT_ATTR}."
_PEFT_STUDENT_PREFIX = f"base_model.{keys.STUDENT_ATTR}."


# ---------------------------------------------------------------------------------------------
# version guard and PeftType member (runs at import, before the classes below are defined)
# ---------------------------------------------------------------------------------------------
def _version_tuple(version: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", version)
    if not m:
        raise SPTError(f"cannot read the installed peft version {version!r}")
    return int(m.group(1)), int(m.group(2))


def check_peft_version(version: str | None = None) -> str:
    """Raise :class:`SPTError` unless ``version`` (default: the installed peft) is supported."""
    if version is None:
        try:
            import peft
        except ImportError:
            raise SPTError("SPT as a PEFT method needs peft: pip install 'spt-adapter[peft]'") from None
        version = peft.__version__
    low, high = PEFT_SUPPORTED
    if not (low <= _version_tuple(version) < high):
        raise SPTError(
            f"spt_adapter.peft supports peft>={low[0]}.{low[1]},<{high[0]}.{high[1]} but peft {version} is "
            f"installed: pip install 'peft>={low[0]}.{low[1]},<{high[0]}.{high[1]}' (spt-adapter files saved with "
            "spt_adapter.save_adapter need no peft at all)"
        )
    return version


check_peft_version()

from peft import PeftConfig  # noqa: E402
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, check_target_module_exists  # noqa: E402
from peft.utils import PeftType  # noqa: E402


def _add_peft_type_member() -> PeftType:
    """Add ``PeftType.SPT`` to PEFT's closed str-enum (idempotent)."""
    existing = PeftType._member_map_.get(PEFT_TYPE_NAME)
    if existing is not None:
        return cast(PeftType, existing)
    member = str.__new__(PeftType, PEFT_TYPE_NAME)
    member._name_ = PEFT_TYPE_NAME
    member._value_ = PEFT_TYPE_NAME
    if hasattr(enum.Enum, "_sort_order_"):
        member._sort_order_ = len(PeftType._member_names_)  # type: ignore[attr-defined]  # enum internals (3.11+), not in the stubs
    PeftType._member_map_[PEFT_TYPE_NAME] = member
    PeftType._value2member_map_[PEFT_TYPE_NAME] = member
    PeftType._member_names_.append(PEFT_TYPE_NAME)
    type.__setattr__(PeftType, PEFT_TYPE_NAME, member)
    return member


SPT_PEFT_TYPE = _add_peft_type_member()


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------
def _exact_regex(names: list[str]) -> str:
    """A PEFT ``target_modules`` string (full-match regex) selecting exactly ``names``."""
    return "(" + "|".join(re.escape(n) for n in names) + ")"


#: SPTConfig's unit fields, mirrored by SPTPeftConfig (targets are PEFT's own; versions are recorded apart)
_UNIT_FIELDS = tuple(
    f
    for f in dataclasses.fields(SPTConfig)
    if f.name not in ("targets", "exclude", "schema_version", "library_version")
)


def _mirror(f: dataclasses.Field) -> tuple[str, Any, dataclasses.Field]:
    if f.default_factory is not dataclasses.MISSING:
        return f.name, f.type, field(default_factory=f.default_factory)
    return f.name, f.type, field(default=f.default)


def _unit_values(source) -> dict[str, Any]:
    return {f.name: copy.deepcopy(getattr(source, f.name)) for f in _UNIT_FIELDS}


class _SPTPeftConfigMethods:
    """PEFT config of SPT units.

    target_modules: PEFT's syntax, a list of module-name suffixes or one full-match regex string;
        ``None``: the spt-adapter plugin that claims the model proposes them (its preset).
    exclude_modules: likewise. Every unit field of :class:`spt_adapter.SPTConfig` (fusion, hidden,
    depth, prior_channels, prior_resize, prior, integration, preset, student) is a field here too,
    derived from SPTConfig's own, with the same defaults and checks. ``student`` (a distilled
    prior) adds a :class:`~spt_adapter.core.student.PriorStudent` that makes the prior from the input.
    unit_channels: each target's unit width; filled at injection (probe pass) and saved, so
        loading needs no probe. example_input_shape: the probe input's shape (default: a 64x64
        input built from the model's first convolution).
    """

    def __post_init__(self):
        PeftConfig.__post_init__(self)
        self.peft_type = SPT_PEFT_TYPE
        if self.spt_schema_version > SCHEMA_VERSION:
            raise ConfigError(
                f"this SPT PEFT config uses schema version {self.spt_schema_version}; this spt-adapter reads up to "
                f"{SCHEMA_VERSION}: upgrade spt-adapter"
            )
        if isinstance(self.target_modules, list):
            self.target_modules = list(self.target_modules)
        # validates the unit fields (ConfigError); the student's settings as SPTConfig keeps them (defaults filled)
        self.student = self.to_spt_config().student

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder=None, **kwargs):
        """PEFT's reader, after the checks every SPT file gets: a local ``adapter_config.json`` must be
        strict JSON (no duplicate keys) of bounded size."""
        folder = Path(str(pretrained_model_name_or_path))
        local = (folder / subfolder if subfolder else folder) / PEFT_CONFIG_NAME
        if local.is_file():
            _read_peft_config_json(local)
        return super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)

    def to_spt_config(self, targets: list[str] | None = None) -> SPTConfig:
        return SPTConfig(targets=list(targets or []), **_unit_values(self))

    @classmethod
    def from_spt_config(
        cls, config: SPTConfig, names: list[str], channels: dict[str, int] | None = None, **kwargs
    ) -> SPTPeftConfig:
        return SPTPeftConfig(
            target_modules=_exact_regex(names),
            **_unit_values(config),
            unit_channels=dict(channels) if channels else None,
            **kwargs,
        )


if TYPE_CHECKING:

    class SPTPeftConfig(_SPTPeftConfigMethods, PeftConfig):
        """What the type checker sees of the dataclass built below: its fields (the unit fields are
        SPTConfig's, tests/test_lint.py checks that the two lists agree)."""

        target_modules: list[str] | str | None
        exclude_modules: list[str] | str | None
        fusion: str
        hidden: int
        depth: int
        prior_channels: int
        prior_resize: str
        prior: dict[str, Any]
        integration: str | None
        preset: str | None
        student: dict[str, int] | None
        unit_channels: dict | None
        example_input_shape: list | None
        spt_schema_version: int

        def __init__(self, **fields: Any) -> None: ...
else:
    SPTPeftConfig = dataclasses.make_dataclass(
        "SPTPeftConfig",
        [
            ("target_modules", Optional[list[str] | str], field(default=None)),  # noqa: UP045 -- a runtime field type PEFT reads: spelt as its configs spell it
            ("exclude_modules", Optional[list[str] | str], field(default=None)),  # noqa: UP045 -- a runtime field type PEFT reads: spelt as its configs spell it
            *(_mirror(f) for f in _UNIT_FIELDS),
            ("unit_channels", Optional[dict], field(default=None)),  # noqa: UP045 -- a runtime field type PEFT reads: spelt as its configs spell it
            ("example_input_shape", Optional[list], field(default=None)),  # noqa: UP045 -- a runtime field type PEFT reads: spelt as its configs spell it
            ("spt_schema_version", int, field(default=SCHEMA_VERSION)),
        ],
        bases=(_SPTPeftConfigMethods, PeftConfig),
        namespace={"__module__": __name__, "__doc__": _SPTPeftConfigMethods.__doc__},
    )


# ---------------------------------------------------------------------------------------------
# layer
# ---------------------------------------------------------------------------------------------
class SPTPeftLayer(SPTLayer, BaseTunerLayer):
    """A core SPT layer that PEFT manages: ``base_layer`` runs unchanged, then each active
    adapter's unit corrects the output (in order)."""

    adapter_layer_names = ("spt_units",)
    other_param_names = ()

    def __init__(self, base_layer: nn.Module, name: str, state: PriorState, layout, adapter_name: str) -> None:
        SPTLayer.__init__(self, base_layer, name, state, layout)
        self._disable_adapters = False
        self.merged_adapters = []
        self._active_adapter = adapter_name

    def update_layer(self, adapter_name: str, channels: int, config: SPTConfig) -> None:
        self.spt_units[adapter_name] = make_unit(channels, config, self.base_layer)
        self.set_adapter(self.active_adapters)

    def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
        raise SPTError(
            "SPT units are non-linear and read a prior at run time: they cannot be merged into the "
            "backbone's weights (use unload() to get the backbone back)"
        )

    def unmerge(self) -> None:
        return None

    prior_hint = "call peft_model(x, spt_prior=p) or run inside `with peft_model.use_prior(p):`"

    def active_unit_names(self) -> list[str]:
        """PEFT's active adapters (several may be active; they run in order)."""
        if self.disable_adapters or self._spt_state.disabled:
            return []
        return [a for a in self.active_adapters if a in self.spt_units]

    def __repr__(self) -> str:
        return "spt." + super().__repr__()


# ---------------------------------------------------------------------------------------------
# tuner
# ---------------------------------------------------------------------------------------------
def _nested_under_layer(key: str, layer_keys: list[str]) -> bool:
    return any(key.startswith(k + ".") for k in layer_keys)


class SPTPeftModel(BaseTuner):
    """The PEFT tuner of SPT. Made by ``peft.get_peft_model``; not instantiated directly."""

    prefix: str = PREFIX
    tuner_layer_cls = SPTPeftLayer
    target_module_mapping: dict = {}

    def __init__(self, model, peft_config, adapter_name, *args, **kwargs) -> None:
        object.__setattr__(self, "_spt_state", PriorState())
        object.__setattr__(self, "_spt_plans", {})
        object.__setattr__(self, "_spt_hooks", [])
        object.__setattr__(self, "_spt_stack", [])
        object.__setattr__(self, "_spt_enabled", True)  # False inside PeftModel.disable_adapter()
        super().__init__(model, peft_config, adapter_name, *args, **kwargs)

    # -- injection ------------------------------------------------------------------------
    def _existing_layer_keys(self, model: nn.Module) -> list[str]:
        return [k for k, m in model.named_modules() if isinstance(m, SPTPeftLayer)]

    def _selects(self, model: nn.Module, config: SPTPeftConfig):
        """PEFT's name predicate (suffix list or full-match regex, exclude_modules), skipping
        modules inside SPT layers that already exist."""
        layers = self._existing_layer_keys(model)
        return lambda key: not _nested_under_layer(key, layers) and bool(check_target_module_exists(config, key))

    def _pre_injection_hook(self, model: nn.Module, config: PeftConfig, adapter_name: str) -> None:
        self._spt_plan(model, cast(SPTPeftConfig, config), adapter_name)

    def _config(self, adapter_name: str) -> SPTPeftConfig:
        return cast(SPTPeftConfig, self.peft_config[adapter_name])  # this tuner holds SPT configs only

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args, **kwargs) -> None:
        # PeftModel.add_adapter calls inject_adapter without the pre-injection hook: plan here too
        if adapter_name not in self._spt_plans:
            self._spt_plan(model, self._config(adapter_name), adapter_name)
        if keys.STUDENT_ATTR not in self._modules:
            self.add_module(keys.STUDENT_ATTR, nn.ModuleDict())
        # adding an adapter leaves the trainability of those already there as it was (PEFT restores
        # the backbone's parameters itself; the students are not in the backbone)
        flags = {n: [p.requires_grad for p in m.parameters()] for n, m in self.spt_students.items()}
        try:
            super().inject_adapter(model, adapter_name, *args, **kwargs)
        finally:
            self._spt_plans.pop(adapter_name, None)
        for name, student in self.spt_students.items():
            for param, flag in zip(student.parameters(), flags.get(name, ()), strict=False):
                param.requires_grad = flag
        self._add_student(adapter_name, self._config(adapter_name))
        self._register_prior_hooks(model)

    def _add_student(self, adapter_name: str, config: SPTPeftConfig) -> None:
        """The prior student of a distilled adapter, on its units' device and dtype (as SPTModel
        places it), trainable when the adapter is active and not in inference mode (as its units)."""
        if config.student is None:
            return
        student = PriorStudent.from_config(config.student, config.prior_channels)
        ref = next(
            (
                p
                for _, layer in self._layers()
                if adapter_name in layer.spt_units
                for p in layer.spt_units[adapter_name].parameters()
            ),
            None,
        )
        if ref is not None:
            student.to(device=ref.device, dtype=ref.dtype)
        student.requires_grad_(adapter_name in self.active_adapters and not config.inference_mode)
        self.spt_students[adapter_name] = student

    def _spt_plan(self, model: nn.Module, config: SPTPeftConfig, adapter_name: str) -> None:
        """Core's planner with PEFT's name predicate: targets, layouts and unit widths, checked
        before anything changes."""
        if not isinstance(config, SPTPeftConfig):
            raise ConfigError(f"SPT needs an SPTPeftConfig, got {type(config).__name__}")
        claim = None
        if config.target_modules is None:
            claim = claim_model(model)
            if claim is None:
                raise TargetError(
                    f"SPTPeftConfig has no target_modules and no spt-adapter plugin claims a {type(model).__name__}; "
                    "pass target_modules= (a list of module-name suffixes or one regex)"
                )
            config.target_modules = _exact_regex(inspect_targets(model, claim.targets))
            config.integration, config.preset = claim.integration, claim.preset
        shown = config.target_modules if isinstance(config.target_modules, str) else ",".join(config.target_modules)
        names = select_targets(model, self._selects(model, config), f"target_modules {shown!r}")
        spt_config = config.to_spt_config(names)
        example = None
        if config.example_input_shape:
            ref = next(model.parameters(), None)
            example = torch.zeros(
                *config.example_input_shape,
                dtype=ref.dtype if ref is not None else torch.float32,
                device=ref.device if ref is not None else "cpu",
            )
        previous = self._spt_state.disabled
        self._spt_state.disabled = True  # existing SPT layers pass through during the probe
        try:
            plan = plan_injection(model, spt_config, claim, example, channels=config.unit_channels, names=names)
        finally:
            self._spt_state.disabled = previous
        config.unit_channels = dict(plan.channels)
        self._spt_plans[adapter_name] = {"names": plan.names, "layouts": plan.layouts, "config": spt_config}

    def _prepare_adapter_config(self, peft_config, model_config):
        return peft_config

    def _create_and_replace(
        self,
        peft_config,
        adapter_name,
        target,
        target_name,
        parent,
        current_key=None,
        parameter_name: str | None = None,
        **kwargs,
    ) -> None:
        plan = self._spt_plans[adapter_name]
        key = current_key if current_key is not None else target_name
        if key not in peft_config.unit_channels:
            raise TargetError(f"module {key!r} was not planned for SPT adapter {adapter_name!r}")
        channels = peft_config.unit_channels[key]
        if isinstance(target, SPTPeftLayer):
            target.update_layer(adapter_name, channels, plan["config"])
            return
        layer = SPTPeftLayer(target, key, self._spt_state, plan["layouts"].get(key), adapter_name)
        layer.update_layer(adapter_name, channels, plan["config"])
        setattr(parent, target_name, layer)

    def _register_prior_hooks(self, model: nn.Module) -> None:
        if not self._spt_hooks:
            self._spt_hooks.append(model.register_forward_pre_hook(self._spt_pre_hook, with_kwargs=True))
            self._spt_hooks.append(model.register_forward_hook(self._spt_post_hook, with_kwargs=True, always_call=True))

    # -- the prior --------------------------------------------------------------------------
    def _active_configs(self) -> list[SPTPeftConfig]:
        return [self._config(a) for a in self.active_adapters if a in self.peft_config]

    def student(self, adapter_name: str | None = None) -> PriorStudent | None:
        """The prior student of an adapter (the active one by default), or None if it has none."""
        if adapter_name is None:
            active = [a for a in self.active_adapters if a in self.peft_config]
            adapter_name = active[0] if len(active) == 1 else None
        student = self._student_modules().get(adapter_name) if adapter_name is not None else None
        return cast(PriorStudent, student) if student is not None else None

    def _student_modules(self) -> dict[str, nn.Module]:
        """{adapter name: its prior student} (empty before the first distilled adapter)."""
        students = self._modules.get(keys.STUDENT_ATTR)
        return dict(students.named_children()) if students is not None else {}

    def _check_student_alone(self, names: list[str]) -> None:
        """A distilled adapter runs alone (as in SPTModel, where one adapter is active): its units read
        its own student's prior, which no other adapter's units were trained on."""
        distilled = [n for n in names if self.student(n) is not None]
        if len(names) > 1 and distilled:
            raise PriorError(
                f"adapter {distilled[0]!r} carries a distilled prior and runs alone, but {names} would be "
                f"active together: activate one, e.g. set_adapter({distilled[0]!r})"
            )

    def _active_student(self) -> tuple[str, PriorStudent] | None:
        """(name, student) of the active adapter when it is distilled and adapters are enabled, else None."""
        if self._spt_state.disabled or not self._spt_enabled:
            return None
        active = [a for a in self.active_adapters if a in self.peft_config]
        self._check_student_alone(active)
        student = self.student(active[0]) if len(active) == 1 else None
        return (active[0], student) if student is not None else None

    def check_prior(self, prior: Any, batch: int | None = None) -> torch.Tensor:
        """Validate a prior for the active adapter(s); raise :class:`PriorError` naming the problem."""
        if prior is None:
            return validate_prior(prior, batch, name="spt_prior")
        configs: list[SPTPeftConfig | None] = [*self._active_configs()] or [None]
        for config in configs:
            prior = validate_prior(prior, batch, config.prior_channels if config else None, name="spt_prior")
        return prior

    def _spt_pre_hook(self, module, args, kwargs):
        # one stack entry per call; the post hook (always called, also after an error) pops it
        self._spt_stack.append(None)
        prior = kwargs.pop("spt_prior", None)
        distilled = self._active_student()
        if distilled is not None:
            name, student = distilled
            if prior is not None or self._spt_state.prior is not None:
                raise student_prior_refusal(name, "peft_model(x)", "spt_prior")
            # SPTModel.forward's steps: the logits of the first tensor, their sigmoid checked as a prior
            logits = student_logits(student, args, kwargs)
            checked = validate_prior(
                torch.sigmoid(logits),
                batch_size(args, kwargs),
                self.peft_config[name].prior_channels,
                name="spt_prior",
                adapter=name,
            )
            self._spt_stack[-1] = (self._spt_state.prior,)
            self._spt_state.set_prior(checked)
        elif prior is not None:
            checked = self.check_prior(prior, batch_size(args, kwargs))
            self._spt_stack[-1] = (self._spt_state.prior,)
            self._spt_state.set_prior(checked)
        return args, kwargs

    def _spt_post_hook(self, module, args, kwargs, output):
        entry = self._spt_stack.pop() if self._spt_stack else None
        if entry is not None:
            self._spt_state.set_prior(entry[0])
        return None

    @contextlib.contextmanager
    def use_prior(self, prior: torch.Tensor) -> Iterator[SPTPeftModel]:
        """Set the prior for every forward call inside the block (for trainers that call ``net(lq)``)."""
        distilled = self._active_student()
        if distilled is not None:
            raise student_prior_refusal(distilled[0], "peft_model(x)", "spt_prior")
        with self._spt_state.using(self.check_prior(prior)):
            yield self

    # -- adapters (explicit, so that behaviour does not depend on BaseTuner defaults) -------
    def _layers(self) -> Iterator[tuple[str, SPTPeftLayer]]:
        for name, module in self.model.named_modules():
            if isinstance(module, SPTPeftLayer):
                yield name, module

    def _mark_only_adapters_as_trainable(self, model: nn.Module) -> None:
        for name, param in model.named_parameters():
            if not keys.is_unit_key(name):  # units and prior students stay as they are
                param.requires_grad = False

    def _set_adapter_layers(self, enabled: bool = True) -> None:
        object.__setattr__(self, "_spt_enabled", enabled)  # the students follow the layers
        for _, layer in self._layers():
            layer.enable_adapters(enabled)

    def set_requires_grad(self, adapter_names, requires_grad: bool = True) -> None:
        super().set_requires_grad(adapter_names, requires_grad)
        for name in [adapter_names] if isinstance(adapter_names, str) else list(adapter_names):
            student = self.student(name)
            if student is not None:
                student.requires_grad_(requires_grad)

    def enable_adapter_layers(self) -> None:
        self._set_adapter_layers(True)

    def disable_adapter_layers(self) -> None:
        self._set_adapter_layers(False)

    def set_adapter(self, adapter_name, inference_mode: bool = False) -> None:
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        unknown = [n for n in names if n not in self.peft_config]
        if unknown:
            raise TargetError(f"no SPT adapter named {unknown[0]!r}; adapters: {list(self.peft_config)}")
        self._check_student_alone(names)
        for _, layer in self._layers():
            layer.set_adapter(names)
            if inference_mode:
                for name in names:
                    if name in layer.spt_units:
                        layer.spt_units[name].requires_grad_(False)
        for name, student in self._student_modules().items():
            student.requires_grad_(name in names and not inference_mode)  # as BaseTunerLayer does for units
        self.active_adapter = adapter_name

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.peft_config:
            raise TargetError(f"no SPT adapter named {adapter_name!r}; adapters: {list(self.peft_config)}")
        del self.peft_config[adapter_name]
        self._spt_plans.pop(adapter_name, None)
        if self.student(adapter_name) is not None:
            del self.spt_students[adapter_name]
        remaining = list(self.peft_config)
        for name, layer in list(self._layers()):
            if adapter_name in layer.spt_units:
                del layer.spt_units[adapter_name]
            if len(layer.spt_units) == 0:
                self._unwrap(name, layer)
            elif adapter_name in layer.active_adapters:
                rest = [a for a in layer.active_adapters if a != adapter_name] or remaining[:1]
                layer.set_adapter(rest)
        active = [a for a in self.active_adapters if a != adapter_name] or remaining[:1]
        self.active_adapter = active[0] if len(active) == 1 else active

    def _unwrap(self, name: str, layer: SPTPeftLayer) -> None:
        parent_name, _, attr = name.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        setattr(parent, attr, layer.base_layer)

    def _check_merge_allowed(self):
        raise SPTError(
            "SPT units are non-linear and read a prior at run time: they cannot be merged into the "
            "backbone's weights (use unload() to get the backbone back)"
        )

    def merge_and_unload(self, *args, **kwargs):
        self._check_merge_allowed()

    def unload(self) -> nn.Module:
        """Remove every SPT layer, prior student and the prior hooks; return the original backbone."""
        for name, layer in list(self._layers()):
            self._unwrap(name, layer)
        for handle in self._spt_hooks:
            handle.remove()
        self._spt_hooks.clear()
        for name in list(self._student_modules()):
            del self.spt_students[name]
        return self.model

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        # '<target>.spt_units.<adapter>.<param>' -> '<target>.spt_units.<param>';
        # 'base_model.spt_students.<adapter>.<param>' -> 'base_model.spt_students.<param>'
        if f"{_PEFT_STUDENTS}{adapter_name}." in key:
            return key.replace(f"{_PEFT_STUDENTS}{adapter_name}.", _PEFT_STUDENTS, 1)
        return key.replace(f"{_PEFT_UNIT}{adapter_name}.", _PEFT_UNIT, 1)

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls, model: nn.Module, config, adapter_name: str, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """PEFT's remapping, then a check that a distilled adapter's checkpoint holds its student (PEFT
        would only warn and leave the student at random init); on failure the adapter is removed again
        (the only one: the backbone gets its modules back) before the :class:`AdapterFileError`."""
        from .files.format import check_unit_tensor_values

        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        tuner = next((m for m in model.modules() if isinstance(m, SPTPeftModel)), None)
        try:  # what load_adapter refuses (int tensors, NaN, Inf, absurd values) is refused here too
            check_unit_tensor_values(state_dict, f"the PEFT checkpoint of adapter {adapter_name!r}")
        except AdapterFileError:
            if tuner is not None:
                if list(tuner.peft_config) == [adapter_name]:
                    tuner.unload()
                else:
                    tuner.delete_adapter(adapter_name)
            raise
        if tuner is None or tuner.student(adapter_name) is None:
            return remapped
        marker = f"{_PEFT_STUDENTS}{adapter_name}."
        missing = sorted(
            cls._remove_adapter_name_from_key(k, adapter_name)
            for k in model.state_dict()
            if marker in k and k not in remapped
        )
        if missing:
            if list(tuner.peft_config) == [adapter_name]:
                tuner.unload()
            else:
                tuner.delete_adapter(adapter_name)
            raise AdapterFileError(
                f"the PEFT checkpoint of adapter {adapter_name!r} lacks {len(missing)} prior-student tensor(s) (e.g. "
                f"{missing[0]}) that its config (student={config.student}) needs: it was not written by "
                "save_pretrained or spt_to_peft of this distilled adapter"
            )
        return remapped


def _register() -> None:
    """Fill PEFT's mapping tables for SPT (once; refuse if another 'SPT' is registered)."""
    import peft.mapping as mapping

    tables = [
        getattr(mapping, n)
        for n in ("PEFT_TYPE_TO_CONFIG_MAPPING", "PEFT_TYPE_TO_TUNER_MAPPING", "PEFT_TYPE_TO_PREFIX_MAPPING")
        if hasattr(mapping, n)
    ]
    config_table = mapping.PEFT_TYPE_TO_CONFIG_MAPPING
    current = config_table.get(SPT_PEFT_TYPE)
    if current is SPTPeftConfig:
        return
    if current is not None:
        raise SPTError(
            f"another PEFT method is registered as {PEFT_TYPE_NAME!r} ({current.__module__}."
            f"{current.__qualname__}); spt_adapter.peft cannot register SPT"
        )
    register: Callable[..., None] | None
    try:
        from peft.utils import register_peft_method as register
    except ImportError:
        register = None
    if register is not None:
        register(name=PEFT_TYPE_NAME.lower(), config_cls=SPTPeftConfig, model_cls=SPTPeftModel, prefix=PREFIX)
    else:  # pragma: no cover - versions without the helper
        mapping.PEFT_TYPE_TO_CONFIG_MAPPING[SPT_PEFT_TYPE] = SPTPeftConfig
        mapping.PEFT_TYPE_TO_TUNER_MAPPING[SPT_PEFT_TYPE] = SPTPeftModel
        if hasattr(mapping, "PEFT_TYPE_TO_PREFIX_MAPPING"):
            mapping.PEFT_TYPE_TO_PREFIX_MAPPING[SPT_PEFT_TYPE] = PREFIX
    del tables


_register()


# ---------------------------------------------------------------------------------------------
# conversions between PEFT folders and spt-adapter files
# ---------------------------------------------------------------------------------------------
def peft_key_to_core(key: str) -> str:
    """``base_model.model.<target>.spt_units.<param>`` -> ``<target>.spt_unit.<param>``;
    ``base_model.spt_students.<param>`` -> ``spt_student.<param>`` (a distilled prior's student)."""
    if key.startswith(_PEFT_STUDENT_PREFIX) and len(key) > len(_PEFT_STUDENT_PREFIX):
        return keys.student_file_key(key[len(_PEFT_STUDENT_PREFIX) :])
    if not key.startswith(_PEFT_KEY_PREFIX) or _PEFT_UNIT not in key:
        raise AdapterFileError(f"tensor {key!r} is not an SPT unit or prior-student tensor of a PEFT adapter")
    return key[len(_PEFT_KEY_PREFIX) :].replace(_PEFT_UNIT, _CORE_UNIT, 1)


def core_key_to_peft(key: str) -> str:
    """``<target>.spt_unit.<param>`` -> ``base_model.model.<target>.spt_units.<param>``;
    ``spt_student.<param>`` -> ``base_model.spt_students.<param>``."""
    param = keys.split_student_file_key(key)
    if param is not None:
        return _PEFT_STUDENT_PREFIX + param
    if _CORE_UNIT not in key:
        raise AdapterFileError(f"tensor {key!r} is not an SPT unit or prior-student tensor")
    return _PEFT_KEY_PREFIX + key.replace(_CORE_UNIT, _PEFT_UNIT, 1)


def _read_peft_config_json(path: Path) -> Any:
    """An ``adapter_config.json``: bounded size, strict JSON (no duplicate keys, no NaN)."""
    from .files.format import MAX_HEADER_BYTES, strict_json

    if path.stat().st_size > MAX_HEADER_BYTES:
        raise AdapterFileError(
            f"{path} is {path.stat().st_size} bytes, beyond the {MAX_HEADER_BYTES}-byte limit of a "
            "config; not a PEFT adapter config"
        )
    data = strict_json(path.read_bytes(), str(path))
    if not isinstance(data, dict):
        raise AdapterFileError(f"{path} is not a JSON object")
    return data


def read_peft_folder(folder: str | os.PathLike) -> tuple[SPTPeftConfig, dict[str, torch.Tensor]]:
    """The config and unit tensors (PEFT keys) of a PEFT SPT adapter folder, with the checks
    ``load_adapter`` makes: strict JSON, header limits, floating-point, finite, sane tensors."""
    from safetensors import safe_open

    from .files.format import check_tensor_entries, check_unit_tensor_values, read_safetensors_header

    folder = Path(folder)
    cfg_path, weights = folder / PEFT_CONFIG_NAME, folder / PEFT_WEIGHTS_NAME
    if not cfg_path.is_file() or not weights.is_file():
        raise AdapterFileError(
            f"{folder} is not a PEFT adapter folder (needs {PEFT_CONFIG_NAME} and {PEFT_WEIGHTS_NAME})"
        )
    data = _read_peft_config_json(cfg_path)
    if data.get("peft_type") != PEFT_TYPE_NAME:
        raise AdapterFileError(f"{folder} holds a PEFT {data.get('peft_type')!r} adapter, not an SPT one")
    known = {f.name for f in dataclasses.fields(SPTPeftConfig)}
    try:
        config = SPTPeftConfig(**{k: v for k, v in data.items() if k in known and k != "peft_type"})
    except ConfigError as exc:
        raise AdapterFileError(f"{cfg_path}: {exc}") from None
    header, data_size = read_safetensors_header(weights, "PEFT weights file")
    header.pop("__metadata__", None)
    check_tensor_entries(weights, header, data_size)
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:
        raise AdapterFileError(f"{weights} is corrupt: {exc}") from None
    check_unit_tensor_values(tensors, str(weights))
    return config, tensors


def _targets_in_order(file_keys, channels: dict | None) -> list[str]:
    found = []
    for key in file_keys:
        split = keys.split_unit_file_key(key)  # None for a prior student's tensor
        if split is not None and split[0] not in found:
            found.append(split[0])
    if channels:
        order = [n for n in channels if n in found]
        return order + [n for n in found if n not in order]
    return found


def load_peft_adapter(
    backbone: nn.Module, folder: str | os.PathLike, adapter_name: str = "default", example_input=None
):
    """Load a PEFT SPT adapter folder onto ``backbone`` as an :class:`~spt_adapter.SPTModel`.

    The units are rebuilt with the core from the recorded widths (``unit_channels``); a folder
    without them gets one probe pass. On error ``backbone`` is left as it was.
    """
    from .files.format import add_adapter_with_tensors, check_units_against_header

    config, tensors = read_peft_folder(folder)
    core = {peft_key_to_core(k): v for k, v in tensors.items()}
    names = _targets_in_order(core, config.unit_channels)
    channels = {n: int(c) for n, c in (config.unit_channels or {}).items() if n in names} or None
    if channels is not None and set(channels) != set(names):
        channels = None
    spt_config = config.to_spt_config(names)
    if not names:
        raise AdapterFileError(f"{folder}: the PEFT weights hold no SPT unit tensors")
    # the tensors are exactly what the config's units have (shapes too), before anything is built
    fp = {"targets": [{"path": n, **({"channels": channels[n]} if channels else {})} for n in names]}
    check_units_against_header(folder, spt_config, fp, {k: {"shape": list(v.shape)} for k, v in core.items()})
    return add_adapter_with_tensors(
        backbone, adapter_name, spt_config, names, channels, core, source=str(folder), example_input=example_input
    )


def peft_to_spt(
    folder: str | os.PathLike, backbone: nn.Module, path: str | os.PathLike, backbone_hash: bool = True
) -> Path:
    """Convert a PEFT SPT adapter folder into an spt-adapter file (``save_adapter`` format).

    The file's fingerprint (and, with ``backbone_hash``, the weights' sha256) is taken from
    ``backbone``, the untouched backbone the adapter was trained on; it is left unchanged.
    """
    from .files.format import save_adapter

    model = load_peft_adapter(backbone, folder)
    try:
        return save_adapter(model, path, backbone_hash=backbone_hash)
    finally:
        model.eject()


def spt_to_peft(path: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Convert an spt-adapter file into a PEFT folder loadable by ``peft.PeftModel.from_pretrained``.

    Needs no backbone: targets and unit widths come from the file's fingerprint. A distilled
    adapter's student (config and tensors) goes along.
    """
    from safetensors.torch import save as safetensors_save

    from .files.format import (
        _fingerprint_is_well_formed,
        check_units_against_header,
        read_adapter_config,
        read_adapter_header,
        read_unit_tensors,
        strict_json,
    )

    meta, entries = read_adapter_header(path)
    config = read_adapter_config(path)
    fingerprint = strict_json(meta["fingerprint"], f"{path}: metadata 'fingerprint'")
    if not _fingerprint_is_well_formed(fingerprint):
        raise AdapterFileError(f"{path}: metadata 'fingerprint' is malformed")
    check_units_against_header(path, config, fingerprint, entries)
    names = [t["path"] for t in fingerprint["targets"]]
    channels = {t["path"]: int(t["channels"]) for t in fingerprint["targets"] if "channels" in t}
    tensors = {core_key_to_peft(k): v.contiguous() for k, v in read_unit_tensors(path).items()}
    peft_config = SPTPeftConfig.from_spt_config(config, names, channels if len(channels) == len(names) else None)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = peft_config.to_dict()
    out = {k: (sorted(v) if isinstance(v, set) else v) for k, v in out.items()}
    out["peft_type"] = PEFT_TYPE_NAME
    atomic_write_bytes(folder / PEFT_WEIGHTS_NAME, safetensors_save(tensors, metadata={"format": "pt"}))
    atomic_write_bytes(folder / PEFT_CONFIG_NAME, json.dumps(out, indent=2, sort_keys=True).encode())
    return folder


__all__ = [
    "PEFT_SUPPORTED",
    "SPTPeftConfig",
    "SPTPeftLayer",
    "SPTPeftModel",
    "check_peft_version",
    "core_key_to_peft",
    "load_peft_adapter",
    "peft_key_to_core",
    "peft_to_spt",
    "read_peft_folder",
    "spt_to_peft",
]
