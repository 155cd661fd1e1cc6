"""SPT's PEFT tuner (:class:`SPTPeftModel`: injection, the prior hooks, the student, PEFT's key
mapping) and its registration in PEFT's tables."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, cast

import torch
import torch.nn as nn
from peft import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, check_target_module_exists

from ..core import keys
from ..core.layer import PriorState
from ..core.lora import LoraUnit
from ..core.model import batch_size, student_logits, student_prior_refusal, validate_prior
from ..core.planning import claim_model, plan_injection
from ..core.student import PriorStudent
from ..core.targets import inspect_targets, select_targets
from ..errors import AdapterFileError, BackboneHashMismatchError, ConfigError, PriorError, SPTError, TargetError
from .config import _PEFT_STUDENTS, _PEFT_UNIT, PEFT_TYPE_NAME, PREFIX, SPT_PEFT_TYPE, SPTPeftConfig, _exact_regex
from .layer import SPTPeftLayer


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
        self._check_backbone(model, config, adapter_name)
        self._spt_plans[adapter_name] = {"names": plan.names, "layouts": plan.layouts, "config": spt_config}

    @staticmethod
    def _check_backbone(model: nn.Module, config: SPTPeftConfig, adapter_name: str) -> None:
        """Record the backbone's weights (a fresh adapter) or refuse other weights (a loaded one), as a
        delta file's fingerprint does; a config written before the field existed is not checked."""
        from ..files.fingerprint import backbone_sha256

        got = backbone_sha256(model)
        want = config.backbone_sha256
        if want is None:
            config.backbone_sha256 = got
        elif got != want:
            raise BackboneHashMismatchError(
                f"PEFT adapter {adapter_name!r}: the backbone's weights differ from those it was trained on "
                f"(sha256 {got[:12]}... != {want[:12]}...)",
                override="load it onto the backbone it was trained on, or set backbone_sha256=None in its "
                "adapter_config.json to load it anyway",
            )

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
            "backbone's weights (use unload() to get the backbone back; LoRA adapters, fusion='lora', merge)"
        )

    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False, adapter_names=None) -> nn.Module:
        """LoRA adapters (``fusion="lora"``) only: add each active LoRA update to its target's weights (peft's
        own ``merge``) and return the plain backbone, changed in place as peft's ``merge_and_unload`` changes
        it. SPT units cannot be merged: refused before anything changes."""
        names = list(adapter_names) if adapter_names is not None else list(self.active_adapters)
        units = [layer.spt_units[n] for _, layer in self._layers() for n in names if n in layer.spt_units]
        if not units or not all(getattr(u, "takes_call", False) for u in units):
            self._check_merge_allowed()
        for unit in units:
            cast(LoraUnit, unit).merge_into_target()
        return self.unload()

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
        from ..files.format import check_unit_tensor_values

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
        if tuner is not None:
            # PEFT only warns about a checkpoint that lacks a unit's tensor (left at its initial value) or
            # holds tensors no unit has: a file for another config or another backbone, refused here
            unit_marker = f"{_PEFT_UNIT}{adapter_name}."
            own = model.state_dict()
            lacking = sorted(k for k in own if unit_marker in k and k not in remapped)
            extra = sorted(k for k in remapped if k not in own)
            if lacking or extra:
                if list(tuner.peft_config) == [adapter_name]:
                    tuner.unload()
                else:
                    tuner.delete_adapter(adapter_name)
                what = []
                if lacking:
                    what.append(f"lacks {len(lacking)} unit tensor(s) its config needs (e.g. {lacking[0]})")
                if extra:
                    what.append(f"holds {len(extra)} tensor(s) no unit of this backbone has (e.g. {extra[0]})")
                raise AdapterFileError(
                    f"the PEFT checkpoint of adapter {adapter_name!r} {' and '.join(what)}: it was written for "
                    "another config or another backbone"
                )
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
