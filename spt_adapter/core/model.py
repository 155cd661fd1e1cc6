"""SPTModel: a backbone with SPT units, the prior plumbing, and named adapters.

Size: the model class, the checks every prior passes before any compute (shared with the PEFT tuner) and
``inject`` with its keywords belong together: they are the one place that says what a forward call takes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn as nn

from ..errors import ConfigError, PriorError, SPTError, TargetError
from .config import NO_PRIOR, SPTConfig
from .keys import get_logical_module, is_unit_key, logical_named_modules, student_file_key, unit_file_key
from .layer import PriorState, SPTLayer, iter_layers, make_unit, prior_follows_padding, unwrap, wrap
from .planning import budget_parameters, hidden_for_budget, plan_injection, resolve_config, target_weight_shapes
from .student import PriorStudent

if TYPE_CHECKING:
    import numpy as np


class SPTModel(nn.Module):
    """A frozen backbone with SPT units on its target modules.

    Use :func:`spt_adapter.inject` to make one. ``model(x, prior=p)`` runs the backbone with the
    active adapter's units reading ``p``; attribute access falls through to the backbone.

    An adapter whose units read no prior (``SPTConfig.prior_channels`` 0, ``inject(..., prior="none")``)
    runs as ``model(x)``; passing it a prior is a :class:`PriorError` (nothing would read it).

    An adapter whose config has a ``student`` (a distilled prior) carries a
    :class:`~spt_adapter.core.student.PriorStudent` that makes the prior from the input: ``model(x)``
    then needs no prior, and passing one is a :class:`PriorError` (the units were trained on the
    student's maps, not on a provider's). ``model(x, return_prior_logits=True)`` returns
    ``(output, student logits)`` for the distillation loss.
    """

    def __init__(self, base_model: nn.Module) -> None:
        super().__init__()
        self.base_model = base_model
        self.spt_config: dict[str, SPTConfig] = {}
        self.spt_targets: dict[str, list[str]] = {}
        self._spt_state = PriorState()
        self.spt_students = nn.ModuleDict()  # one PriorStudent per distilled adapter (keys.STUDENT_ATTR)
        self._requires_grad = {n: p.requires_grad for n, p in base_model.named_parameters()}
        self._modes = {m: m.training for m in base_model.modules()}
        for p in base_model.parameters():
            p.requires_grad_(False)
        self.train(base_model.training)

    # -- attribute fall-through ---------------------------------------------------------------
    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    # -- adapters ----------------------------------------------------------------------------
    @property
    def active_adapter(self) -> str | None:
        return self._spt_state.active

    @property
    def adapters(self) -> list[str]:
        return list(self.spt_config)

    def add_adapter(
        self,
        adapter_name: str,
        config: SPTConfig | None = None,
        *,
        targets: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        example_input: torch.Tensor | None = None,
        _channels: dict[str, int] | None = None,
        _names: list[str] | None = None,
        preset: str | None = None,
        hidden: int | None = None,
        depth: int | None = None,
        prior: str | None = None,
        budget: int | float | None = None,
        fusion: str | None = None,
    ) -> SPTModel:
        """Add a named adapter (units on its own targets) and make it active; ``preset``, ``hidden``,
        ``depth``, ``prior``, ``budget`` and ``fusion`` as for :func:`inject`."""
        if not isinstance(adapter_name, str) or not adapter_name.isidentifier():
            raise TargetError(f"adapter_name must be an identifier, got {adapter_name!r}")
        if adapter_name in self.spt_config:
            raise TargetError(
                f"adapter {adapter_name!r} exists already; delete_adapter() it first or pick another name"
            )
        if budget is not None and hidden is not None:
            raise ConfigError("budget= chooses hidden: pass one of them")
        config = unit_options(config, hidden=hidden, depth=depth, prior=prior, fusion=fusion)
        config, claim = resolve_config(self.base_model, targets, exclude, config, preset)
        with self.disable_adapter():  # the probe pass sees the plain backbone
            plan = plan_injection(self.base_model, config, claim, example_input, _channels, _names)
        if budget is not None:
            wanted = budget_parameters(budget, self.base_model)
            weights = target_weight_shapes(self.base_model, plan.names)
            config = config.replace(hidden=hidden_for_budget(plan.channels, config, wanted, weights))
        if config.fusion == "lora" and config.lora_alpha is None:
            config = config.replace(lora_alpha=float(config.hidden))  # recorded: scale 1 at this rank
        units = {n: make_unit(plan.channels[n], config, get_logical_module(self.base_model, n), n) for n in plan.names}
        student = None
        if config.student is not None:
            student = PriorStudent.from_config(config.student, config.prior_channels)
            like = next(iter(units.values())).parameters() if units else iter(())
            ref = next(like, None)
            if ref is not None:
                student.to(device=ref.device, dtype=ref.dtype)
        # everything is validated: now change the model
        for name in plan.names:
            layer = wrap(self.base_model, name, self._spt_state, plan.layouts[name])
            layer.spt_units[adapter_name] = units[name]
        if student is not None:
            self.spt_students[adapter_name] = student
        self.spt_config[adapter_name] = config
        self.spt_targets[adapter_name] = plan.names
        self.set_adapter(adapter_name)
        return self

    def set_adapter(self, adapter_name: str) -> None:
        """Make ``adapter_name`` the active adapter: its units run and train, the others are frozen."""
        self._check_adapter(adapter_name)
        self._spt_state.active = adapter_name
        for _, layer in iter_layers(self.base_model):
            for name, unit in layer.spt_units.items():
                unit.requires_grad_(name == adapter_name)
        for name, student in self.spt_students.items():
            student.requires_grad_(name == adapter_name)

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter's units; modules left without units get their original back."""
        self._check_adapter(adapter_name)
        for name, layer in list(iter_layers(self.base_model)):
            if adapter_name in layer.spt_units:
                del layer.spt_units[adapter_name]
            if len(layer.spt_units) == 0:
                unwrap(self.base_model, name)
        if adapter_name in self.spt_students:
            del self.spt_students[adapter_name]
        del self.spt_config[adapter_name]
        del self.spt_targets[adapter_name]
        if self._spt_state.active == adapter_name:
            self._spt_state.active = next(iter(self.spt_config), None)
            if self._spt_state.active is not None:
                self.set_adapter(self._spt_state.active)

    def _check_adapter(self, adapter_name: str | None) -> str:
        """``adapter_name`` if this model has that adapter; else :class:`TargetError`."""
        if adapter_name is None or adapter_name not in self.spt_config:
            raise TargetError(f"no adapter named {adapter_name!r}; adapters: {self.adapters}")
        return adapter_name

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Inside this block the model gives the exact backbone output (no prior needed)."""
        previous = self._spt_state.disabled
        self._spt_state.disabled = True
        try:
            yield
        finally:
            self._spt_state.disabled = previous

    def eject(self) -> nn.Module:
        """Remove every unit and return the original backbone: same module tree, same state_dict,
        same ``requires_grad`` flags as before injection."""
        for name, _ in list(iter_layers(self.base_model)):
            unwrap(self.base_model, name)
        for n, p in self.base_model.named_parameters():
            p.requires_grad_(self._requires_grad.get(n, p.requires_grad))
        for module in self.base_model.modules():
            module.training = self._modes.get(module, module.training)
        self.spt_config.clear()
        self.spt_targets.clear()
        for name in list(self.spt_students):
            del self.spt_students[name]
        self._spt_state.active = None
        return self.base_model

    # -- the prior ---------------------------------------------------------------------------
    def _config(self) -> SPTConfig | None:
        active = self._spt_state.active
        return self.spt_config.get(active) if active else None

    def student(self, adapter_name: str | None = None) -> PriorStudent | None:
        """The prior student of an adapter (the active one by default), or None if it has none."""
        adapter_name = adapter_name or self.active_adapter
        if adapter_name is None or adapter_name not in self.spt_students:
            return None
        return cast(PriorStudent, self.spt_students[adapter_name])  # the dict holds students only

    def _refuse_prior_for_student(self) -> None:
        raise student_prior_refusal(self.active_adapter)

    def check_prior(self, prior: Any, batch: int | None = None, like: torch.Tensor | None = None) -> torch.Tensor:
        """Validate a prior for the active adapter; raise :class:`PriorError` naming the problem.
        With ``like`` (the input), the prior is moved to its device and floating dtype."""
        config = self._config()
        return validate_prior(
            prior,
            batch,
            config.prior_channels if config else None,
            adapter=self.active_adapter,
            like=like,
            value_range=prior_range(config),
        )

    def _refuse_prior_for_no_prior(self) -> None:
        raise PriorError(
            f"adapter {self.active_adapter!r} reads no prior (it was made with prior='none'): call model(x) "
            "without prior= and without use_prior()"
        )

    def _reads_no_prior(self) -> bool:
        config = self._config()
        return config is not None and not config.reads_prior

    @contextlib.contextmanager
    def use_prior(self, prior: torch.Tensor) -> Iterator[SPTModel]:
        """Set the prior for every forward call inside the block (for trainers that call ``net(lq)``)."""
        if self.student() is not None:
            self._refuse_prior_for_student()
        if self._reads_no_prior():
            self._refuse_prior_for_no_prior()
        with self._spt_state.using(self.check_prior(prior)):
            yield self

    def forward(
        self,
        *args: Any,
        prior: torch.Tensor | np.ndarray | None = None,
        return_prior_logits: bool = False,
        prior_logits_only: bool = False,
        **kwargs: Any,
    ) -> Any:
        """The backbone with the active adapter's units. ``return_prior_logits``: also the prior
        student's logits, ``(out, logits)``; ``prior_logits_only``: the student's logits alone, the
        backbone not run (a distilled prior's student-only training steps, through DDP too)."""
        state = self._spt_state
        student = None if state.disabled else self.student()
        if (return_prior_logits or prior_logits_only) and student is None:
            flag = "prior_logits_only" if prior_logits_only else "return_prior_logits"
            raise PriorError(f"{flag}=True needs an active adapter with a distilled prior (a student)")
        if state.disabled or state.active is None:
            return self.base_model(*args, **kwargs)
        if student is not None:
            if prior is not None or state.prior is not None:
                self._refuse_prior_for_student()
            logits = student_logits(student, args, kwargs)
            if prior_logits_only:
                return logits
            with state.using(self.check_prior(torch.sigmoid(logits), batch_size(args, kwargs))):
                with prior_follows_padding(self.base_model, state):
                    out = self.base_model(*args, **kwargs)
            return (out, logits) if return_prior_logits else out
        if self._reads_no_prior():
            if prior is not None or state.prior is not None:
                self._refuse_prior_for_no_prior()
            return self.base_model(*args, **kwargs)
        given = prior if prior is not None else state.prior
        with state.using(self.check_prior(given, batch_size(args, kwargs), first_tensor(args, kwargs))):
            with prior_follows_padding(self.base_model, state):
                return self.base_model(*args, **kwargs)

    # -- training helpers --------------------------------------------------------------------
    def train(self, mode: bool = True) -> SPTModel:
        """Like ``nn.Module.train`` for the units; the frozen backbone always runs in eval mode.

        A frozen backbone must compute the same function in training and at test time: no dropout
        or drop-path noise (spandrel builds SwinIR/HAT with drop_path_rate=0.1) and no BatchNorm
        statistics updates. ``eject()`` hands the backbone back in the mode it had at injection.
        """
        super().train(mode)
        for module in _backbone_modules(self.base_model):
            module.training = False
        self.base_model.training = False
        for _, layer in iter_layers(self.base_model):
            layer.spt_units.train(mode)
        self.spt_students.train(mode)
        return self

    def unit_parameters(self, adapter_name: str | None = None) -> Iterator[tuple[str, nn.Parameter]]:
        """(delta-file key, parameter) of every trainable tensor of one adapter: its units', then
        its prior student's (``spt_student.<param>``) when it has one."""
        adapter_name = self._check_adapter(adapter_name or self.active_adapter)
        for target, layer in iter_layers(self.base_model):
            unit = layer.spt_units[adapter_name] if adapter_name in layer.spt_units else None
            if unit is not None:
                for pname, p in unit.named_parameters():
                    yield unit_file_key(target, pname), p
        student = self.student(adapter_name)
        if student is not None:
            for pname, p in student.named_parameters():
                yield student_file_key(pname), p

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return trainable, total

    def print_trainable_parameters(self) -> str:
        trainable, total = self.get_nb_trainable_parameters()
        backbone = total - sum(p.numel() for n, p in self.named_parameters() if is_unit_key(n))
        line = (
            f"trainable params: {trainable:,} || all params: {total:,} || trainable%: "
            f"{100 * trainable / max(total, 1):.4f} || units/backbone: {100 * trainable / max(backbone, 1):.3f}%"
        )
        print(line)
        return line

    def unit_names(self, adapter_name: str | None = None) -> list[str]:
        adapter_name = adapter_name or self.active_adapter
        return list(self.spt_targets.get(adapter_name, [])) if adapter_name is not None else []

    # -- files --------------------------------------------------------------------------------
    # Core does not import the file layer above it: spt_adapter.files registers these operations
    # (register_file_operations) when it is imported, and `import spt_adapter` imports it before any
    # SPTModel can be made through the facade.
    def save_adapter(self, path: str | os.PathLike, adapter_name: str | None = None, **kwargs: Any) -> Path:
        """Write this adapter as a safetensors delta (see :func:`spt_adapter.save_adapter`)."""
        return _file_operation("save_adapter")(self, path, adapter_name=adapter_name, **kwargs)

    def load_adapter(self, path: str | os.PathLike, adapter_name: str = "default", **kwargs: Any) -> SPTModel:
        """Add an adapter from a delta file (see :func:`spt_adapter.load_adapter`)."""
        return _file_operation("load_adapter")(self, path, adapter_name=adapter_name, **kwargs)

    def save_pretrained(
        self, save_directory: str | os.PathLike, adapter_name: str | None = None, **kwargs: Any
    ) -> Path:
        """Write ``spt_adapter.safetensors`` + a model card into a folder (see :mod:`spt_adapter.files.hub`)."""
        return _file_operation("save_pretrained")(self, save_directory, adapter_name, **kwargs)

    def push_to_hub(
        self, repo_id: str, *, private: bool | None = None, token: str | bool | None = None, **kwargs: Any
    ) -> Any:
        """Upload one adapter to a Hugging Face Hub repo in one commit (see :mod:`spt_adapter.files.hub`)."""
        return _file_operation("push_to_hub")(self, repo_id, private=private, token=token, **kwargs)


#: the file operations SPTModel declares and the file layer provides (dependency inversion: core names
#: the interface, :mod:`spt_adapter.files` fills it when it is imported; core never imports the layer above)
FILE_OPERATIONS = ("save_adapter", "load_adapter", "save_pretrained", "push_to_hub")
_FILE_OPERATIONS: dict[str, Any] = {}


def register_file_operations(**operations) -> None:
    """Called by :mod:`spt_adapter.files` to provide SPTModel's file methods (:data:`FILE_OPERATIONS`)."""
    unknown = sorted(set(operations) - set(FILE_OPERATIONS))
    if unknown:
        raise TypeError(f"register_file_operations: {unknown} are not SPTModel file operations {FILE_OPERATIONS}")
    _FILE_OPERATIONS.update(operations)


def _file_operation(name: str):
    try:
        return _FILE_OPERATIONS[name]
    except KeyError:
        raise SPTError(
            f"SPTModel.{name} is provided by spt_adapter.files, which is not imported yet: `import spt_adapter` "
            "(the package facade loads it), or `import spt_adapter.files`"
        ) from None


#: every encoding the library makes (spt_adapter.prior.encode) lies in [0, 1]
ENCODED_PRIOR_RANGE = (0.0, 1.0)
#: a prior the library did not encode may hold any value float16 can (mixed precision): beyond
#: this, the encoder's convolutions overflow (3e38 gave Inf outputs)
FREE_PRIOR_LIMIT = 65504.0


def prior_range(config: SPTConfig | None) -> tuple[float, float]:
    """The values a prior for ``config``'s units may hold: [0, 1] when the adapter records one of the
    library's encodings (they promise that range), else [-65504, 65504]."""
    if config is not None and isinstance(config.prior, dict) and config.prior.get("encoding"):
        return ENCODED_PRIOR_RANGE
    return (-FREE_PRIOR_LIMIT, FREE_PRIOR_LIMIT)


def validate_prior(
    prior: Any,
    batch: int | None = None,
    prior_channels: int | None = None,
    *,
    name: str = "prior",
    adapter: str | None = None,
    like: torch.Tensor | None = None,
    value_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Check a prior before any compute; raise :class:`PriorError` naming the problem.

    Accepts a tensor or a NumPy array (what ``PriorCache.get_or_compute`` returns) of shape
    ``(B, C_p, H, W)``, or ``(C_p, H, W)`` for one prior shared by the whole batch (a batch
    dimension is added and expanded to ``batch``). Returns a tensor, with a bool label map turned
    into float; with ``like`` (the input tensor) it is on ``like``'s device and, when ``like`` is a
    floating tensor, in its dtype. ``name`` is the argument's name as the user wrote it (``prior``;
    ``spt_prior`` through PEFT). ``value_range``: the (low, high) its values must lie in
    (:func:`prior_range`).
    """
    if prior is None:
        raise PriorError(f"the {name} is missing: pass {name}=p to the forward call or use `with model.use_prior(p):`")
    if not torch.is_tensor(prior):
        import numpy as np

        if not isinstance(prior, np.ndarray):
            raise PriorError(
                f"the {name} must be a torch.Tensor or NumPy array of shape (B, C_p, H, W) or (C_p, H, W), "
                f"got {type(prior).__name__}"
            )
        if prior.dtype.kind not in "fiub":
            raise PriorError(f"the {name} has NumPy dtype {prior.dtype}; expected float, integer or bool")
        prior = torch.from_numpy(np.ascontiguousarray(prior))
    if prior.dim() == 3:
        prior = prior[None].expand(batch or 1, *prior.shape)
    if prior.dim() != 4:
        raise PriorError(f"the {name} must have shape (B, C_p, H, W) or (C_p, H, W), got shape {tuple(prior.shape)}")
    if batch is not None and prior.shape[0] != batch:
        raise PriorError(f"the {name} has batch size {prior.shape[0]} but the input has batch size {batch}")
    if prior_channels is not None and prior.shape[1] != prior_channels:
        whose = f"adapter {adapter!r}" if adapter else "the adapter"
        raise PriorError(
            f"the {name} has {prior.shape[1]} channel(s) but {whose} was built for prior_channels={prior_channels}"
        )
    if prior.shape[2] < 1 or prior.shape[3] < 1:
        raise PriorError(f"the {name} is empty: shape {tuple(prior.shape)}")
    if prior.device.type == "meta":
        raise PriorError(f"the {name} is on the meta device and holds no values; make it on the input's device")
    if prior.is_complex():
        raise PriorError(f"the {name} is complex ({prior.dtype}); priors are real-valued")
    if prior.dtype == torch.bool or not prior.is_floating_point():
        prior = prior.to(torch.float32)
    elif not bool(torch.isfinite(prior).all()):
        raise PriorError(f"the {name} contains NaN or Inf values")
    if value_range is not None and prior.numel():
        lo, hi = float(prior.detach().min()), float(prior.detach().max())
        if lo < value_range[0] or hi > value_range[1]:
            what = (
                "the range every spt-adapter encoding gives"
                if value_range == ENCODED_PRIOR_RANGE
                else "float16's range (larger values overflow the units)"
            )
            raise PriorError(
                f"the {name} holds values in [{lo:.4g}, {hi:.4g}], outside [{value_range[0]:g}, "
                f"{value_range[1]:g}], {what}"
            )
    if like is not None:
        dtype = like.dtype if like.is_floating_point() else prior.dtype
        prior = prior.to(device=like.device, dtype=dtype)
    return prior


def student_prior_refusal(adapter: str | None, call: str = "model(x)", arg: str = "prior") -> PriorError:
    """The error for a prior given to an adapter with a distilled prior (SPTModel and the PEFT tuner)."""
    return PriorError(
        f"adapter {adapter!r} carries a distilled prior (a student network makes its prior from the "
        f"input): call {call} without {arg}= and without use_prior()"
    )


def student_logits(student: PriorStudent, args: tuple, kwargs: dict) -> torch.Tensor:
    """The student's logits on a forward call's first tensor argument (its prior is their sigmoid)."""
    x = first_tensor(args, kwargs)
    if x is None:
        raise PriorError("the prior student reads the forward call's first tensor argument, and there is none")
    return student.logits(x)


def first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The first tensor argument of a forward call (the input whose device and dtype a prior follows)."""
    return next((v for v in list(args) + list(kwargs.values()) if torch.is_tensor(v)), None)


def batch_size(args: tuple, kwargs: dict) -> int | None:
    """The batch size of a forward call: the first dimension of its first tensor argument."""
    for value in list(args) + list(kwargs.values()):
        if torch.is_tensor(value) and value.dim() >= 1:
            return int(value.shape[0])
    return None


def _backbone_modules(root: nn.Module) -> Iterator[nn.Module]:
    for _, module in logical_named_modules(root):
        yield module


#: the values of ``inject(..., prior=)``: ``"none"``, units that read no prior (``prior_channels`` 0)
PRIOR_CHOICES = (NO_PRIOR,)


def unit_options(
    config: SPTConfig | None,
    *,
    hidden: int | None = None,
    depth: int | None = None,
    prior: str | None = None,
    fusion: str | None = None,
) -> SPTConfig | None:
    """``config`` (or the default one) with the unit-kind, unit-size and prior keywords of :func:`inject`
    applied and checked; ``config`` itself when none is given."""
    changes: dict[str, Any] = {}
    if fusion is not None:
        changes["fusion"] = fusion
    if hidden is not None:
        changes["hidden"] = hidden
    if depth is not None:
        changes["depth"] = depth
    if prior is not None:
        if prior not in PRIOR_CHOICES:
            raise ConfigError(
                f"prior={prior!r}: inject takes prior='none' (units that read no prior); a segmenter's prior "
                "is passed to each call (model(x, prior=p)), its channels set with SPTConfig(prior_channels=C)"
            )
        changes["prior_channels"] = 0
        base = config.prior if config is not None else {}
        changes["prior"] = {k: v for k, v in base.items() if k not in ("provider", "kind", "encoding")}
    if not changes:
        return config
    updated = (config if config is not None else SPTConfig()).replace(**changes)
    updated.__post_init__()
    return updated


def inject(
    model: nn.Module,
    targets: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    config: SPTConfig | None = None,
    adapter_name: str = "default",
    example_input: torch.Tensor | None = None,
    *,
    preset: str | None = None,
    hidden: int | None = None,
    depth: int | None = None,
    prior: str | None = None,
    budget: int | float | None = None,
    fusion: str | None = None,
) -> SPTModel:
    """Add SPT units to ``model`` and return an :class:`SPTModel` with a frozen backbone.

    ``targets``/``exclude`` override ``config.targets``/``config.exclude``; with neither, the plugin
    that claims the model proposes targets: its default preset, or the one named by ``preset``
    (``inject(dncnn, preset="dncnn-light")``; a preset that does not recognise the model is refused,
    naming those that do; ``spt-adapter inspect BACKBONE`` lists them with their parameter counts).
    ``hidden`` (the units' width; ``SPTConfig.hidden``) and ``depth`` (prior-encoder layers) size the
    units, as ``r`` sizes a LoRA; they override the config's. ``budget`` instead of ``hidden``: the
    widest units that fit a parameter count (an int) or a share of the backbone's parameters (a float,
    ``0.02`` for 2 %), for matching another method's size. ``prior="none"``: units that read no
    prior (no encoder, ``model(x)`` with no ``prior=``; recorded in saved files, so ``eval``,
    ``restore`` and ``export`` compute none). ``fusion`` picks the unit kind (``SPTConfig.fusion``);
    ``fusion="lora"`` puts peft's LoRA layer on each target (Conv2d or Linear), ``hidden`` its rank, ``budget``
    the largest rank that fits, merged into the weights on export (:mod:`spt_adapter.core.lora`). Every check (patterns, layouts, unit widths via one
    probe forward pass) runs before the first module is replaced: when inject raises, ``model`` is
    exactly as it was. Injecting into an SPTModel adds a named adapter.
    """
    if isinstance(model, SPTModel):
        return model.add_adapter(
            adapter_name,
            config,
            targets=targets,
            exclude=exclude,
            example_input=example_input,
            preset=preset,
            hidden=hidden,
            depth=depth,
            prior=prior,
            budget=budget,
            fusion=fusion,
        )
    if not isinstance(model, nn.Module):
        raise TargetError(f"inject needs a torch.nn.Module, got {type(model).__name__}")
    if any(isinstance(m, SPTLayer) for m in model.modules()):
        raise TargetError("this model already carries SPT layers; pass its SPTModel to add an adapter")
    config = unit_options(config, hidden=hidden, depth=depth, prior=prior, fusion=fusion)
    resolved, claim = resolve_config(model, targets, exclude, config, preset)
    plan = plan_injection(model, resolved, claim, example_input)  # validates before any change
    if budget is not None and hidden is not None:
        raise ConfigError("budget= chooses hidden: pass one of them")
    if budget is not None:  # checked before the model changes
        weights = target_weight_shapes(model, plan.names)
        wanted = budget_parameters(budget, model)
        resolved = resolved.replace(hidden=hidden_for_budget(plan.channels, resolved, wanted, weights))
    wrapped = SPTModel(model)
    return wrapped.add_adapter(
        adapter_name, resolved, example_input=example_input, _channels=plan.channels, _names=plan.names
    )
