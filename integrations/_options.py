"""The ``spt`` block shared by the BasicSR, Restormer (YAML) and KAIR (JSON) shims.

    spt:
      targets: "layers.*"          # optional: default = the claiming plugin's preset
      exclude: []                   # optional
      fusion: sft                   # SPTConfig fields: fusion, hidden, depth, prior_channels, prior_resize
      hidden: 16
      backbone: ~                   # optional: backbone file (default: the framework's pretrained path)
      adapter: ~                    # optional: start from this SPT adapter (.safetensors)
      prior:
        cache_dir: priors           # PriorCache root (relative paths: to the working directory)
        provider: classical         # classical | sam
        method: slic                # classical: slic | felzenszwalb
        checkpoint: ~               # sam: path to sam_vit_b_01ec64.pth
        model_type: vit_b           # sam
        encoding: boundary          # label | onehot[:K] | boundary (default: boundary; label for fusion: pool,
                                    # the only encoding pool takes -- write it out so that a shared spt_prior
                                    # block, which does not see the fusion, agrees)
        settings: {}                # passed to the provider
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from spt_adapter.core.config import SPTConfig
from spt_adapter.errors import ConfigError, PriorError
from spt_adapter.prior.encode import DEFAULT_ENCODING, check_encoding_for_fusion, default_encoding, parse_encoding

_CONFIG_KEYS = ("targets", "exclude", "fusion", "hidden", "depth", "prior_channels", "prior_resize")
_OWN_KEYS = ("backbone", "adapter", "prior")
_PRIOR_KEYS = ("cache_dir", "provider", "method", "checkpoint", "model_type", "encoding", "settings", "device")
PROVIDERS = ("classical", "sam")


@dataclass
class PriorSpec:
    cache_dir: str = "spt_priors"
    provider: str = "classical"
    method: str = "slic"
    checkpoint: str | None = None
    model_type: str = "vit_b"
    encoding: str = DEFAULT_ENCODING  # parse_spt_block: default_encoding(fusion) when the key is absent
    settings: dict[str, Any] = field(default_factory=dict)
    device: str | None = None

    def describe(self) -> dict[str, Any]:
        """What is recorded in the adapter (SPTConfig.prior): enough to rebuild the same prior."""
        out: dict[str, Any] = {"provider": self.provider, "encoding": self.encoding, "settings": dict(self.settings)}
        if self.provider == "classical":
            out["method"] = self.method
        else:
            out["model_type"] = self.model_type
            out["checkpoint"] = os.path.basename(self.checkpoint or "")
        return out


@dataclass
class SPTOptions:
    """A parsed ``spt`` block."""

    config: SPTConfig
    backbone: str | None = None
    adapter: str | None = None
    prior: PriorSpec = field(default_factory=PriorSpec)


def parse_spt_block(block: Mapping[str, Any] | None, where: str = "spt") -> SPTOptions:
    """Validate an ``spt`` block; unknown keys are named with the known ones."""
    if block is None:
        raise ConfigError(f"the options have no {where!r} block; add one (see docs/integrations.md)")
    if not isinstance(block, Mapping):
        raise ConfigError(f"{where!r} must be a mapping, got {type(block).__name__}")
    unknown = sorted(set(block) - set(_CONFIG_KEYS) - set(_OWN_KEYS))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where!r}; known keys: {sorted(_CONFIG_KEYS + _OWN_KEYS)}")
    prior_block = block.get("prior") or {}
    if not isinstance(prior_block, Mapping):
        raise ConfigError(f"{where}.prior must be a mapping, got {type(prior_block).__name__}")
    unknown = sorted(set(prior_block) - set(_PRIOR_KEYS))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}.prior; known keys: {sorted(_PRIOR_KEYS)}")
    prior = PriorSpec(**{k: (dict(v) if k == "settings" and v is not None else v) for k, v in prior_block.items()})
    if prior.settings is None:
        prior.settings = {}
    if prior.provider not in PROVIDERS:
        raise ConfigError(f"{where}.prior.provider must be one of {PROVIDERS}, got {prior.provider!r}")
    if prior.provider == "sam" and not prior.checkpoint:
        raise ConfigError(f"{where}.prior.provider is 'sam' but {where}.prior.checkpoint (the SAM .pth file) is not set")
    fusion = block.get("fusion")
    if prior_block.get("encoding") is None:  # absent (or ~): the default for the block's fusion ("label" for pool)
        prior.encoding = default_encoding(fusion)
    try:
        parse_encoding(prior.encoding)
        check_encoding_for_fusion(prior.encoding, fusion)
    except PriorError as exc:
        raise ConfigError(f"{where}.prior.encoding: {exc}") from None
    kwargs = {k: _plain(block[k]) for k in _CONFIG_KEYS if k in block and block[k] is not None}
    kwargs["prior"] = prior.describe()
    config = SPTConfig(**kwargs)
    return SPTOptions(config=config, backbone=_opt_path(block.get("backbone")), adapter=_opt_path(block.get("adapter")),
                      prior=prior)


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


def check_dataset_priors(opt: Mapping[str, Any], spt: SPTOptions) -> None:
    """The prior a dataset's ``spt_prior`` block makes must be the one the model's ``spt.prior`` reads.

    A dataset is built before the model and never sees the model's fusion, so an ``spt_prior``
    block without ``encoding`` gets the plain default while a ``pool`` model asks for ``label``:
    refuse that (and any other encoding mismatch) with the key to set, before training starts."""
    for name, dopt in (opt.get("datasets") or {}).items():
        if not isinstance(dopt, Mapping) or dopt.get("spt_prior") is None:
            continue
        where = f"datasets.{name}.spt_prior"
        made = parse_spt_block({"prior": dict(dopt["spt_prior"])}, where).prior.encoding
        if made != spt.prior.encoding:
            raise ConfigError(
                f"{where} makes {made!r} priors but the model's spt.prior reads {spt.prior.encoding!r} "
                f"(fusion {spt.config.fusion!r}); set `encoding: {spt.prior.encoding}` in both blocks "
                "(a YAML anchor can share one block)"
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
    """The mask provider an ``spt.prior`` block describes (``spt_adapter.prior``)."""
    from spt_adapter import prior as prior_api

    if spec.provider == "classical":
        return prior_api.ClassicalMaskProvider(method=spec.method, **spec.settings)
    checkpoint = Path(spec.checkpoint).expanduser()
    if not checkpoint.is_file():
        raise ConfigError(f"spt.prior.checkpoint {checkpoint} does not exist (the SAM checkpoint, e.g. sam_vit_b_01ec64.pth)")
    return prior_api.SamMaskProvider(str(checkpoint), model_type=spec.model_type, device=spec.device, **spec.settings)


class PriorSource:
    """image (HxWx3 uint8 RGB) -> prior (C,H,W float32) through the on-disk cache; SAM never runs
    twice for the same image and settings."""

    def __init__(self, spec: PriorSpec) -> None:
        self.spec = spec
        self._provider = None
        self._cache = None

    def __call__(self, image):
        if self._cache is None:
            from spt_adapter.prior import PriorCache

            self._provider = make_provider(self.spec)
            self._cache = PriorCache(self.spec.cache_dir)
        return self._cache.get_or_compute(image, self._provider, encoding=self.spec.encoding)

    def __getstate__(self):  # DataLoader workers rebuild the provider
        return {"spec": self.spec, "_provider": None, "_cache": None}
