"""SPTConfig: the validated, JSON-serialisable description of one adapter."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..version import __version__
from .student import check_student

#: Version of the config/adapter-file schema. Bump when a saved field changes meaning.
#: 2: ``student`` (a distilled prior: the student's settings; its tensors in the delta).
#: 3: ``prior_channels`` 0 (units that read no prior: no prior encoder; ``prior`` records ``kind: none``).
#: 4: ``fusion="lora"`` and ``lora_alpha`` (peft's LoRA layers on Conv2d / Linear targets, ``hidden`` the rank;
#:    the delta holds ``lora_A`` / ``lora_B`` per target). A reader of schema 3 refuses the new field ("upgrade").
SCHEMA_VERSION = 4

FUSIONS = ("concat", "sft", "pool", "lowrank", "lora")
#: the rank of ``fusion="lora"`` when none is given (`spt-adapter train --fusion lora`): rank 1 on every hidden
#: conv of CDnCNN-B is 1.9 % of the network, the size at which LoRA matched or beat every unit (result 16)
DEFAULT_LORA_RANK = 1
#: the fusions whose units read no prior, whatever ``prior_channels`` says (their configs record 0)
PRIORLESS_FUSIONS = ("lowrank", "lora")
#: The default fusion is the one benchmarks/quality.py supports (docs/results.md): on unseen-noise
#: adaptation `concat` scored ~0.1 dB above `sft` with the same prior margin; `pool` added nothing.
DEFAULT_FUSION = "concat"
PRIOR_RESIZE = ("nearest", "bilinear", "area")


def _as_pattern_list(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{name} must be a pattern string or a list of pattern strings, got {value!r}")
    if any(not v.strip() for v in value):
        raise ConfigError(f"{name} contains an empty pattern: {list(value)!r}")
    return list(value)


#: upper bounds of the unit sizes: typical units are hidden 16-64, depth 2-4; hidden 100000 would ask
#: for 10^10 weights per layer (an out-of-memory traceback, or hours) instead of an answer
UNIT_LIMITS = {"hidden": 4096, "depth": 64, "prior_channels": 4096}
#: the least value of each size: ``prior_channels`` 0 is the "no prior" choice (:data:`NO_PRIOR`)
UNIT_MINIMA = {"hidden": 1, "depth": 1, "prior_channels": 0}
#: ``SPTConfig.prior["kind"]`` of an adapter whose units read no prior (``prior_channels`` 0)
NO_PRIOR = "none"


@dataclass
class SPTConfig:
    """Hyper-parameters of the SPT units of one adapter.

    targets / exclude: pattern(s) over full dotted module names (see :mod:`spt_adapter.core.targets`).
    fusion: ``concat`` (features ++ encoded prior -> conv -> residual; the default), ``sft`` (per-pixel
        scale and shift from the prior) or ``pool`` (features averaged inside each prior region, then a
        residual conv; needs a label-map prior) or ``lowrank`` (no prior read: the features through a
        3x3 conv to ``hidden`` channels, then a zero-initialised 1x1 conv back, added to them, linear at
        ``depth`` 1; the narrow unit of issue 28, result 16 of docs/results.md; always ``prior_channels`` 0)
        or ``lora`` (LoRA through peft's own layers, :mod:`spt_adapter.core.lora`: each target, a Conv2d or
        Linear, gets ``W x + (alpha / r) B A x`` with ``B`` zero at start; no prior; merged into the weights
        on export, so the exported network costs what the backbone does).
    hidden: width of the prior encoder (``lowrank`` and ``lora``: the rank); depth: number of conv layers in it
        (``lowrank``: of 3x3 convs before the 1x1 one, a LeakyReLU between two of them; ``lora``: always 1).
    lora_alpha: ``lora`` only: LoRA's alpha (the update is scaled by ``lora_alpha / hidden``); ``inject``
        records ``hidden`` when none is given (scale 1, as the benchmarks of docs/results.md train it).
    prior_channels: C_p of the prior tensor the units read; 0: the units read no prior (no prior
        encoder: ``model(x)`` takes no ``prior=``, and files record ``prior: {"kind": "none"}``).
    prior_resize: how a prior is resized to each feature map (``nearest`` for label maps).
    prior: free-form description of how priors are made (provider, encoding, settings); recorded
        in adapter files so that users can rebuild the same prior.
    integration / preset: which plugin and preset proposed the targets (recorded for messages).
    student: None, or the settings of a distilled prior (:mod:`spt_adapter.core.student`:
        ``in_channels``, ``width``, ``depth``): the adapter then carries a small network that makes
        its prior from the input, and ``model(x)`` needs no ``prior=``.
    """

    targets: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    fusion: str = DEFAULT_FUSION
    hidden: int = 16
    depth: int = 2
    prior_channels: int = 1
    prior_resize: str = "nearest"
    prior: dict[str, Any] = field(default_factory=dict)
    integration: str | None = None
    preset: str | None = None
    student: dict[str, int] | None = None
    lora_alpha: float | None = None
    schema_version: int = SCHEMA_VERSION
    library_version: str = __version__

    def __post_init__(self) -> None:
        self.targets = _as_pattern_list(self.targets, "targets")
        self.exclude = _as_pattern_list(self.exclude, "exclude")
        if self.fusion not in FUSIONS:
            raise ConfigError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.prior_resize not in PRIOR_RESIZE:
            raise ConfigError(f"prior_resize must be one of {PRIOR_RESIZE}, got {self.prior_resize!r}")
        for name in ("hidden", "depth", "prior_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < UNIT_MINIMA[name]:
                what = "a positive integer" if UNIT_MINIMA[name] else "an integer >= 0 (0: no prior)"
                raise ConfigError(f"{name} must be {what}, got {value!r}")
            if value > UNIT_LIMITS[name]:
                raise ConfigError(
                    f"{name} {value} is beyond the {UNIT_LIMITS[name]} an SPT unit can use (a unit's "
                    f"weights grow with its square): pick a {name} of at most {UNIT_LIMITS[name]}"
                )
        if self.fusion == "pool" and self.prior_resize != "nearest":
            raise ConfigError("fusion='pool' reads region ids from a label map: prior_resize must be 'nearest'")
        if self.fusion == "pool" and self.prior_channels != 1:
            raise ConfigError("fusion='pool' reads regions from a one-channel label map: prior_channels must be 1")
        if not isinstance(self.prior, dict):
            raise ConfigError(f"prior must be a dict describing the prior, got {type(self.prior).__name__}")
        try:
            json.dumps(self.prior, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"prior must be JSON-serialisable: {exc}") from None
        if self.fusion in PRIORLESS_FUSIONS:
            if self.student is not None:
                raise ConfigError(f"fusion={self.fusion!r} reads no prior: a distilled prior (student) would go unused")
            if self.prior_channels not in (0, 1) or self.prior.get("provider"):
                raise ConfigError(
                    f"fusion={self.fusion!r} reads no prior: leave prior_channels at 0 and record no provider "
                    f"(got prior_channels={self.prior_channels}, prior={json.dumps(self.prior, sort_keys=True)[:80]})"
                )
            self.prior_channels = 0  # 1 is the field's default: these units always read no prior
        self._check_lora()
        self._check_no_prior()
        self.student = check_student(self.student)
        if self.student is not None and self.fusion == "pool":
            raise ConfigError(
                "a distilled prior (student) makes a soft map, not the label map the pool fusion reads; "
                "use fusion concat or sft"
            )
        if not isinstance(self.schema_version, int) or self.schema_version < 1:
            raise ConfigError(f"schema_version must be a positive integer, got {self.schema_version!r}")

    # -- LoRA (schema 4) --------------------------------------------------------------------------
    def _check_lora(self) -> None:
        """``lora_alpha`` belongs to ``fusion="lora"`` (a positive finite number); a LoRA unit has no depth
        (``depth`` 1; the field's default 2 is taken as 1)."""
        if self.fusion != "lora":
            if self.lora_alpha is not None:
                raise ConfigError(f"lora_alpha is LoRA's scale: it needs fusion='lora', not {self.fusion!r}")
            return
        if self.depth not in (1, 2):
            raise ConfigError(
                f"fusion='lora' has no depth (one low-rank update per target; hidden is its rank), got depth={self.depth}"
            )
        self.depth = 1
        alpha = self.lora_alpha
        if alpha is None:
            return
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
            raise ConfigError(
                f"lora_alpha must be a positive number (the update is scaled by alpha / rank), got {alpha!r}"
            )
        self.lora_alpha = float(alpha)

    # -- "no prior" (schema 3) ------------------------------------------------------------------
    @property
    def reads_prior(self) -> bool:
        """Whether the units read a prior (False: ``prior_channels`` 0, the "no prior" choice)."""
        return self.prior_channels > 0

    def _check_no_prior(self) -> None:
        """``prior_channels`` 0 and ``prior["kind"] == "none"`` go together (the record is filled in
        when absent); a no-prior adapter records no provider and has no student (nor the pool fusion, refused above)."""
        if not isinstance(self.prior, dict):
            return  # refused above
        recorded_none = self.prior.get("kind") == NO_PRIOR
        if self.reads_prior:
            if recorded_none:
                raise ConfigError(
                    f"prior records kind {NO_PRIOR!r} (no prior) but prior_channels is {self.prior_channels}: "
                    "units that read no prior have prior_channels=0"
                )
            return
        if self.prior.get("provider") or self.prior.get("kind") not in (None, NO_PRIOR):
            raise ConfigError(
                f"prior_channels=0 means the units read no prior, but prior records how one is made "
                f"({json.dumps(self.prior, sort_keys=True)[:120]}); drop one of them"
            )
        if self.student is not None:
            raise ConfigError("a distilled prior (student) makes a prior: it needs prior_channels >= 1")
        self.prior = {**self.prior, "kind": NO_PRIOR}

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Deterministic JSON (sorted keys, no whitespace variation)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SPTConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"an SPTConfig must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown SPTConfig field(s) {unknown}; known fields: {sorted(known)}. "
                "The adapter may come from a newer spt-adapter: upgrade it."
            )
        version = data.get("schema_version", SCHEMA_VERSION)
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise ConfigError(
                f"config schema version {version} is newer than this spt-adapter "
                f"({__version__}) reads (up to {SCHEMA_VERSION}); upgrade spt-adapter"
            )
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> SPTConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"SPTConfig JSON is malformed: {exc}") from None
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> SPTConfig:
        return dataclasses.replace(self, **changes)
