"""SPT's PEFT config: the version guard, the ``PeftType.SPT`` member and :class:`SPTPeftConfig` (the
SPTConfig fields mirrored as a PEFT config dataclass)."""

from __future__ import annotations

import copy
import dataclasses
import enum
import re
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, cast

from ..core import keys
from ..core.config import SCHEMA_VERSION, SPTConfig
from ..errors import AdapterFileError, ConfigError, SPTError

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
    backbone_sha256: the sha256 of the backbone's weights the units were made on (as a delta file's
        fingerprint records it); filled at the first injection and saved, so ``PeftModel.from_pretrained``
        onto other weights is refused (``None`` in folders written before it: not checked).
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
        lora_alpha: float | None
        prior_channels: int
        prior_resize: str
        prior: dict[str, Any]
        integration: str | None
        preset: str | None
        student: dict[str, int] | None
        unit_channels: dict | None
        example_input_shape: list | None
        backbone_sha256: str | None
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
            ("backbone_sha256", Optional[str], field(default=None)),  # noqa: UP045 -- a runtime field type PEFT reads: spelt as its configs spell it
            ("spt_schema_version", int, field(default=SCHEMA_VERSION)),
        ],
        bases=(_SPTPeftConfigMethods, PeftConfig),
        namespace={"__module__": __name__, "__doc__": _SPTPeftConfigMethods.__doc__},
    )


def _read_peft_config_json(path: Path) -> Any:
    """An ``adapter_config.json``: bounded size, strict JSON (no duplicate keys, no NaN)."""
    from ..files.format import MAX_HEADER_BYTES, strict_json

    if path.stat().st_size > MAX_HEADER_BYTES:
        raise AdapterFileError(
            f"{path} is {path.stat().st_size} bytes, beyond the {MAX_HEADER_BYTES}-byte limit of a "
            "config; not a PEFT adapter config"
        )
    data = strict_json(path.read_bytes(), str(path))
    if not isinstance(data, dict):
        raise AdapterFileError(f"{path} is not a JSON object")
    return data
