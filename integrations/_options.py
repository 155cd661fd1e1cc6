"""The ``spt`` block shared by the BasicSR, Restormer (YAML) and KAIR (JSON) shims.

    spt:
      targets: "layers.*"          # optional: default = the claiming plugin's preset
      exclude: []                   # optional
      fusion: sft                   # SPTConfig fields: fusion, hidden, depth, prior_channels, prior_resize,
      hidden: 16                    # lora_alpha (fusion: lora only)
      backbone: ~                   # optional: backbone file (default: the framework's pretrained path)
      adapter: ~                    # optional: start from this SPT adapter (.safetensors)
      student: ~                    # optional: {width: 16, depth: 4} makes a DISTILLED prior (see below)
      distill: ~                    # optional, with student: {weight: 0.1, student_steps: 0}
      prior:
        cache_dir: priors           # PriorCache root (relative paths: to the working directory); ~: no cache
                                    # (for images that never repeat, e.g. KAIR's random patches)
        provider: classical         # classical (with method), or any installed mask provider: sam, sam2,
                                    # slic, felzenszwalb, a plugin's (`spt-adapter plugins` lists them)
        method: slic                # classical: slic | felzenszwalb
        checkpoint: ~               # providers that need weights (sam: sam_vit_b_01ec64.pth)
        model_type: ~               # sam: vit_b (default) | vit_l | vit_h; sam2: its config name
        encoding: boundary          # label | onehot[:K] | boundary (default: boundary; label for fusion: pool,
                                    # the only encoding pool takes -- write it out so that a shared spt_prior
                                    # block, which does not see the fusion, agrees)
        settings: {}                # passed to the provider (checked against its settings when the block is read)

An adapter that reads no prior -- ``fusion: lora`` (peft's LoRA on Conv2d / Linear targets, ``hidden`` its
rank, 1 when not given, as ``spt-adapter train --fusion lora``; ``lora_alpha`` its scale, ``hidden`` when not
given), ``fusion: lowrank``, or any other fusion with ``prior: none`` -- is spelled by the ``prior`` key:

    spt:
      fusion: lora                  # lora / lowrank: no prior is the only choice, ``prior`` may be left out
      hidden: 4
      lora_alpha: 4
      targets: "layers.*.residual_group.blocks.*.attn.qkv"
      prior: none                   # the one spelling of "no prior" (optional for lora / lowrank)

No provider is built or recorded (the adapter records ``prior: {"kind": "none"}``), the shims' datasets and
models compute and pass no prior, and a dataset's ``spt_prior`` / ``spt_teacher`` block is refused (one line:
nothing would read it; a BasicSR train / val dataset is then a plain ``PairedImageDataset``).
``prior_channels: 0`` is accepted only beside ``prior: none`` (it says the same); alone it is refused with
the spelling to use, so that one block never means two things.

A distilled prior (``student``): the adapter carries a small student network that makes the prior
from the network's input, so nothing segments at inference. The ``prior`` block then names the
**teacher**: it runs on the clean (GT) images of the training set only (the datasets' ``spt_teacher``
block, same keys), and the student learns its map by a binary cross-entropy beside the restoration
loss -- alone for the first ``distill.student_steps`` iterations, then jointly with the units,
weighted by ``distill.weight`` (the schedule of ``spt-adapter train --prior distilled``). The
student's input channels are the network's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spt_adapter.core.config import DEFAULT_LORA_RANK, PRIORLESS_FUSIONS, SPTConfig
from spt_adapter.errors import ConfigError, PriorError
from spt_adapter.prior.encode import (
    DEFAULT_ENCODING,
    check_encoding_for_fusion,
    default_encoding,
    encoding_channels,
    parse_encoding,
)

_CONFIG_KEYS = ("targets", "exclude", "fusion", "hidden", "depth", "prior_channels", "prior_resize", "lora_alpha")
_OWN_KEYS = ("backbone", "adapter", "prior", "student", "distill")
_PRIOR_KEYS = ("cache_dir", "provider", "method", "checkpoint", "model_type", "encoding", "settings", "device")
_STUDENT_KEYS = ("width", "depth")  # in_channels: the network's (filled in by attach_units)
_DISTILL_KEYS = ("weight", "student_steps")
CLASSICAL_METHODS = ("slic", "felzenszwalb")
#: the value of ``spt.prior`` for an adapter that reads no prior (``SPTConfig.prior_channels`` 0)
NO_PRIOR_VALUE = "none"
#: the dataset keys of a prior block: ``spt_prior`` (LQ images) for a provider prior,
#: ``spt_teacher`` (GT images) for a distilled one
DATASET_PRIOR_KEY, DATASET_TEACHER_KEY = "spt_prior", "spt_teacher"


@dataclass
class PriorSpec:
    cache_dir: str = "spt_priors"
    provider: str = "classical"
    method: str = "slic"
    checkpoint: str | None = None
    model_type: str | None = None
    encoding: str = DEFAULT_ENCODING  # parse_spt_block: default_encoding(fusion) when the key is absent
    settings: dict[str, Any] = field(default_factory=dict)
    device: str | None = None

    @property
    def provider_name(self) -> str:
        """The name the provider registry knows (``classical`` is spelled by its ``method``)."""
        return self.method if self.provider == "classical" else self.provider

    @property
    def resolved_model_type(self) -> str | None:
        return self.model_type or ("vit_b" if self.provider == "sam" else None)

    def describe(self) -> dict[str, Any]:
        """What is recorded in the adapter (SPTConfig.prior): enough to rebuild the same prior."""
        out: dict[str, Any] = {"provider": self.provider, "encoding": self.encoding, "settings": dict(self.settings)}
        if self.provider == "classical":
            out["method"] = self.method
        else:
            if self.resolved_model_type is not None:
                out["model_type"] = self.resolved_model_type
            if self.checkpoint:
                out["checkpoint"] = os.path.basename(self.checkpoint)
        return out


@dataclass
class DistillSpec:
    """The schedule of a distilled prior (``spt.distill``): ``student_steps`` iterations train the
    student alone on the teacher's map, then ``L_restoration + weight x BCE(student, teacher)``."""

    weight: float = 0.1
    student_steps: int = 0


@dataclass
class SPTOptions:
    """A parsed ``spt`` block."""

    config: SPTConfig
    backbone: str | None = None
    adapter: str | None = None
    #: with a student: the teacher (GT images only); None: the units read no prior (nothing is computed)
    prior: PriorSpec | None = field(default_factory=PriorSpec)
    distill: DistillSpec | None = None  # set iff config.student is set

    @property
    def distilled(self) -> bool:
        return self.config.student is not None

    @property
    def reads_prior(self) -> bool:
        """Whether the units read a prior (False: ``prior: none``, ``fusion: lora`` / ``lowrank``)."""
        return self.config.reads_prior

    @property
    def prior_spec(self) -> PriorSpec:
        """The prior block of an adapter that reads one (a provider's, or a distilled prior's teacher)."""
        if self.prior is None:
            raise ConfigError("internal error: a prior was asked of an spt block that reads none (prior: none)")
        return self.prior


def parse_spt_block(block: Mapping[str, Any] | None, where: str = "spt") -> SPTOptions:
    """Validate an ``spt`` block; unknown keys are named with the known ones. The provider and its
    settings are checked here, before any image is read or any network is built."""
    if block is None:
        raise ConfigError(f"the options have no {where!r} block; add one (see docs/integrations.md)")
    if not isinstance(block, Mapping):
        raise ConfigError(f"{where!r} must be a mapping, got {type(block).__name__}")
    _check_keys(block, _CONFIG_KEYS + _OWN_KEYS, where)
    if _no_prior(block, where):
        return _parse_no_prior(block, where)
    prior_block = _mapping(block.get("prior"), f"{where}.prior")
    _check_keys(prior_block, _PRIOR_KEYS, f"{where}.prior")
    prior = PriorSpec(**{k: (dict(v) if k == "settings" and v is not None else v) for k, v in prior_block.items()})
    if prior.settings is None:
        prior.settings = {}
    _check_provider(prior, f"{where}.prior")
    fusion = block.get("fusion")
    if prior_block.get("encoding") is None:  # absent (or ~): the default for the block's fusion ("label" for pool)
        prior.encoding = default_encoding(fusion)
    try:
        parse_encoding(prior.encoding)
        check_encoding_for_fusion(prior.encoding, fusion)
    except PriorError as exc:
        raise ConfigError(f"{where}.prior.encoding: {exc}") from None
    kwargs = {k: _plain(block[k]) for k in _CONFIG_KEYS if k in block and block[k] is not None}
    distill = None
    if block.get("student") is not None:
        student = _mapping(block["student"], f"{where}.student")
        _check_keys(student, _STUDENT_KEYS, f"{where}.student")
        kwargs["student"] = dict(student)
        distill_block = _mapping(block.get("distill"), f"{where}.distill")
        _check_keys(distill_block, _DISTILL_KEYS, f"{where}.distill")
        distill = DistillSpec(**distill_block)
        _check_distill(distill, f"{where}.distill")
        kwargs["prior"] = {
            "kind": "distilled",
            "teacher": prior.describe(),
            "encoding": prior.encoding,
            "distill_weight": distill.weight,
            "student_steps": distill.student_steps,
        }
    else:
        if block.get("distill") is not None:
            raise ConfigError(
                f"{where}.distill is for a distilled prior: add {where}.student (e.g. {{width: 16, depth: 4}}) "
                f"or drop {where}.distill"
            )
        kwargs["prior"] = prior.describe()
    if "prior_channels" not in kwargs and "student" in kwargs:
        kwargs["prior_channels"] = encoding_channels(prior.encoding)  # the student makes the teacher's channels
    return _block_options(block, where, kwargs, prior, distill)


def _block_options(
    block: Mapping[str, Any], where: str, kwargs: dict[str, Any], prior: Any, distill: Any = None
) -> SPTOptions:
    """The parsed block: its SPTConfig (a refusal names the block) with its backbone / adapter paths."""
    try:
        config = SPTConfig(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return SPTOptions(
        config=config,
        backbone=_opt_path(block.get("backbone")),
        adapter=_opt_path(block.get("adapter")),
        prior=prior,
        distill=distill,
    )


def _no_prior(block: Mapping[str, Any], where: str) -> bool:
    """Whether an ``spt`` block asks for units that read no prior (``prior: none``, or a fusion that reads
    none); a prior block beside such a fusion, and ``prior_channels: 0`` beside a prior, are refused."""
    prior, fusion = block.get("prior"), block.get("fusion")
    if isinstance(prior, str) and prior != NO_PRIOR_VALUE:
        raise ConfigError(
            f"{where}.prior must be a mapping (provider:, method:, ...) or {NO_PRIOR_VALUE!r} (no prior), got {prior!r}"
        )
    if fusion in PRIORLESS_FUSIONS and prior is not None and prior != NO_PRIOR_VALUE:
        raise ConfigError(
            f"{where}: fusion {fusion!r} reads no prior, but {where}.prior describes one: drop {where}.prior "
            f"(or write `prior: {NO_PRIOR_VALUE}`)"
        )
    none = prior == NO_PRIOR_VALUE or fusion in PRIORLESS_FUSIONS
    if not none and block.get("prior_channels") == 0:
        raise ConfigError(
            f"{where}.prior_channels: 0 means no prior, which an spt block spells `prior: {NO_PRIOR_VALUE}`: add it "
            f"(or drop prior_channels to read the prior {where}.prior describes)"
        )
    return none


def _parse_no_prior(block: Mapping[str, Any], where: str) -> SPTOptions:
    """An ``spt`` block whose units read no prior: no provider is checked, built or recorded."""
    fusion = block.get("fusion")
    why = f"fusion {fusion!r}" if fusion in PRIORLESS_FUSIONS else f"`prior: {NO_PRIOR_VALUE}`"
    for key in ("student", "distill"):
        if block.get(key) is not None:
            raise ConfigError(
                f"{where}.{key} is for a distilled prior, but the units read no prior ({why}): drop {where}.{key}"
            )
    kwargs = {k: _plain(block[k]) for k in _CONFIG_KEYS if k in block and block[k] is not None}
    channels = kwargs.setdefault("prior_channels", 0)
    if channels != 0:
        raise ConfigError(
            f"{where}.prior_channels is {channels!r} but the units read no prior ({why}): they have no prior "
            "channels (drop prior_channels)"
        )
    if kwargs.get("fusion") == "lora":
        kwargs.setdefault("hidden", DEFAULT_LORA_RANK)  # the rank `spt-adapter train --fusion lora` takes
    return _block_options(block, where, kwargs, None)


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}")
    return value


def _check_keys(block: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(block) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where!r}; known keys: {sorted(known)}")


def _check_provider(prior: PriorSpec, where: str) -> None:
    """The provider is installed, its settings fit its schema, its checkpoint is named: checked
    through the provider registry (plugin providers included) before anything runs."""
    from spt_adapter.errors import ProviderError
    from spt_adapter.prior.registry import get_provider_spec

    if prior.provider == "classical" and prior.method not in CLASSICAL_METHODS:
        raise ConfigError(
            f"{where}.method must be one of {CLASSICAL_METHODS} for provider 'classical', got {prior.method!r}"
        )
    try:
        spec = get_provider_spec(prior.provider_name)
    except ProviderError as exc:
        raise ConfigError(f"{where}.provider: {exc}; or 'classical' with method: slic | felzenszwalb") from None
    try:
        spec.validate(prior.settings)
    except ProviderError as exc:
        raise ConfigError(f"{where}.settings: {exc}") from None
    if spec.needs_checkpoint and not prior.checkpoint:
        raise ConfigError(
            f"{where}.provider is {prior.provider!r} but {where}.checkpoint (its weights file) is not set "
            f"({spec.description})"
        )


def _check_distill(distill: DistillSpec, where: str) -> None:
    weight, steps = distill.weight, distill.student_steps
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0 or weight == float("inf"):
        raise ConfigError(f"{where}.weight must be a finite number >= 0, got {weight!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"{where}.student_steps must be an integer >= 0, got {steps!r}")


def task_of(opt: Mapping[str, Any]) -> str | None:
    """The task a framework's options train for, as `spt-adapter eval --task` spells it: ``sr:<scale>``
    from ``scale`` > 1, else ``denoise:<sigma>`` from one integer noise level of the train dataset
    (KAIR's ``sigma``, Restormer's ``sigma_test``/``sigma_range`` when a single value); else None."""
    try:
        scale = int(opt.get("scale") or 1)
    except (TypeError, ValueError):
        scale = 1
    if scale > 1:
        return f"sr:{scale}"
    train = ((opt.get("datasets") or {}).get("train") or {}) if isinstance(opt.get("datasets"), Mapping) else {}
    for key in ("sigma", "sigma_test", "sigma_range"):
        value = train.get(key) if isinstance(train, Mapping) else None
        if isinstance(value, (list, tuple)) and len(set(value)) == 1:
            value = value[0]
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255:
            return f"denoise:{value}"
    return None


def dataset_prior_block(dopt: Mapping[str, Any], where: str) -> tuple[str, PriorSpec] | None:
    """A dataset's prior block: ``(DATASET_PRIOR_KEY, spec)`` (LQ priors), ``(DATASET_TEACHER_KEY,
    spec)`` (a distilled prior's teacher, GT images only), or None; both at once is refused."""
    given = [k for k in (DATASET_PRIOR_KEY, DATASET_TEACHER_KEY) if dopt.get(k) is not None]
    if not given:
        return None
    if len(given) == 2:
        raise ConfigError(
            f"{where} has both {DATASET_PRIOR_KEY} (priors of the LQ images) and {DATASET_TEACHER_KEY} "
            "(a distilled prior's teacher on the GT images): keep the one the model's spt block reads"
        )
    key = given[0]
    return key, parse_spt_block({"prior": dict(_mapping(dopt[key], f"{where}.{key}"))}, f"{where}.{key}").prior_spec


def check_dataset_priors(opt: Mapping[str, Any], spt: SPTOptions) -> None:
    """The prior a dataset makes must be the one the model reads, checked before training starts.

    A provider prior: datasets with ``spt_prior`` must make the model's encoding (a dataset is built
    before the model and never sees its fusion, so an ``spt_prior`` block without ``encoding`` gets
    the plain default while a ``pool`` model asks for ``label``). A distilled prior: no dataset may
    make LQ priors (the student makes them); ``spt_teacher`` blocks must name the model's teacher."""
    for name, dopt in (opt.get("datasets") or {}).items():
        if not isinstance(dopt, Mapping):
            continue
        where = f"datasets.{name}"
        found = dataset_prior_block(dopt, where)
        if found is None:
            continue
        key, made = found
        if not spt.reads_prior:
            raise ConfigError(
                f"{where}.{key}: the adapter reads no prior (spt fusion {spt.config.fusion!r}"
                f"{'' if spt.config.fusion in PRIORLESS_FUSIONS else ', prior: ' + NO_PRIOR_VALUE}), so nothing "
                f"would read this one: drop {key}"
                + (" and use `type: PairedImageDataset`" if dopt.get("type") == "SPTPairedImageDataset" else "")
            )
        if spt.distilled and key == DATASET_PRIOR_KEY:
            raise ConfigError(
                f"{where}.{DATASET_PRIOR_KEY}: the model has a distilled prior (spt.student): its student "
                f"makes the prior from the input. Give the train dataset `{DATASET_TEACHER_KEY}:` (the "
                f"teacher, run on GT images only) and the validation datasets none"
            )
        if not spt.distilled and key == DATASET_TEACHER_KEY:
            raise ConfigError(
                f"{where}.{DATASET_TEACHER_KEY} is the teacher of a distilled prior, but spt has no "
                f"student: add spt.student, or use `{DATASET_PRIOR_KEY}:` (priors of the LQ images)"
            )
        mine = spt.prior_spec
        if made.encoding != mine.encoding:
            raise ConfigError(
                f"{where}.{key} makes {made.encoding!r} priors but the model's spt.prior reads {mine.encoding!r} "
                f"(fusion {spt.config.fusion!r}); set `encoding: {mine.encoding}` in both blocks "
                "(a YAML anchor can share one block)"
            )
        if key == DATASET_TEACHER_KEY and made.describe() != mine.describe():
            raise ConfigError(
                f"{where}.{DATASET_TEACHER_KEY} runs {made.describe()} but spt.prior (the teacher the "
                f"adapter records) is {mine.describe()}: share one block (a YAML anchor)"
            )


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return list(value)
    return value


def _opt_path(value: Any) -> str | None:
    if value is None:
        return None
    return os.path.expanduser(str(value))


def make_provider(spec: PriorSpec):
    """The mask provider an ``spt.prior`` block describes, built through the provider registry
    (``spt_adapter.prior.make_provider``: built-in and plugin providers alike)."""
    from spt_adapter.prior import make_provider as build

    checkpoint = None
    if spec.checkpoint:
        checkpoint = Path(spec.checkpoint).expanduser()
        if not checkpoint.is_file():
            raise ConfigError(
                f"spt.prior.checkpoint {checkpoint} does not exist (the {spec.provider} weights file, "
                "e.g. sam_vit_b_01ec64.pth)"
            )
        checkpoint = str(checkpoint)
    return build(
        spec.provider_name,
        checkpoint=checkpoint,
        model_type=spec.resolved_model_type,
        device=spec.device,
        **spec.settings,
    )


def provider_image(chw):
    """A network-side image tensor ``(C, H, W)`` in [0, 1] (KAIR's items, Restormer's batches) as the
    ``HxWx3 uint8`` RGB image a mask provider reads: clamped, rounded, first 3 channels, grey repeated."""
    import numpy as np
    import torch

    image = (chw.detach()[:3].clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image)


class PriorSource:
    """image (HxWx3 uint8 RGB) -> prior (C,H,W float32) through the on-disk cache; SAM never runs
    twice for the same image and settings. ``cache_dir: ~`` computes every prior (nothing written)."""

    def __init__(self, spec: PriorSpec) -> None:
        self.spec = spec
        self._provider = None
        self._cache = None

    def __call__(self, image):
        from spt_adapter.prior import PriorCache, compute_prior

        if self._provider is None:
            self._provider = make_provider(self.spec)
            self._cache = PriorCache(self.spec.cache_dir) if self.spec.cache_dir is not None else None
        return compute_prior(image, self._provider, self.spec.encoding, self._cache)

    def __getstate__(self):  # DataLoader workers rebuild the provider
        return {"spec": self.spec, "_provider": None, "_cache": None}
