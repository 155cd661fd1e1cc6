"""Model cards (README.md) for SPT adapters shared on the Hugging Face Hub or as folders.

The card is rendered from the adapter file's own header (the single source of truth), so what
the card says about targets, prior and backbone is exactly what the file will check on load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .format import ADAPTER_FILENAME, MODEL_CARD_FILENAME, PRIOR_KEY, TRAINING_KEY, prior_record, read_adapter_header


def _json(meta: dict[str, str], key: str, default: Any) -> Any:
    try:
        return json.loads(meta[key]) if meta.get(key) else default
    except json.JSONDecodeError:
        return default


def _yaml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML scalar


def card_facts(path: str | os.PathLike) -> dict[str, Any]:
    """The facts a card shows, read from an adapter file's header (no tensor is loaded)."""
    meta, entries = read_adapter_header(path)
    config = _json(meta, "config", {})
    fingerprint = _json(meta, "fingerprint", {})
    numel = 0
    for entry in entries.values():
        n = 1
        for s in entry["shape"]:
            n *= s
        numel += n
    targets = fingerprint.get("targets", [])
    return {
        "backbone_class": fingerprint.get("backbone_class") or "unknown",
        "backbone_sha256": fingerprint.get("backbone_sha256"),
        "integration": meta.get("integration") or config.get("integration") or None,
        "preset": meta.get("preset") or config.get("preset") or None,
        "targets": [(t.get("path"), t.get("class"), t.get("channels")) for t in targets],
        "patterns": config.get("targets", []),
        "fusion": config.get("fusion"),
        "hidden": config.get("hidden"),
        "depth": config.get("depth"),
        "prior_channels": config.get("prior_channels"),
        "prior_resize": config.get("prior_resize"),
        "prior": prior_record(_json(meta, PRIOR_KEY, {}) or {}),
        "parameters": numel,
        "tensors": len(entries),
        "format_version": meta.get("format_version"),
        "library_version": meta.get("library_version"),
        "adapter_name": meta.get("adapter_name"),
        "training": _json(meta, TRAINING_KEY, None),
    }


def _checkpoint_name(training: dict[str, Any] | None) -> str | None:
    """The backbone checkpoint's file name from a training record (``"backbone": "<arch> from <path>"``,
    as ``spt-adapter train`` writes it), for the Backbone section beside the class and sha256."""
    described = (training or {}).get("backbone")
    if not isinstance(described, str) or not described.strip():
        return None
    return Path(described.rsplit(" from ", 1)[-1]).name or None


def render_model_card(
    path: str | os.PathLike, repo_id: str | None = None, training: dict[str, Any] | None = None
) -> str:
    """Markdown model card (with Hub YAML front matter) for the adapter file at ``path``."""
    f = card_facts(path)
    training = training if training is not None else f["training"]
    prior = f["prior"] or {}  # prior_record's schema: the provider's identity nested under "provider"
    ident = prior.get("provider")
    if not isinstance(ident, dict):
        ident = {}
    provider = (
        " / ".join(str(ident[k]) for k in ("provider", "method", "model_type") if ident.get(k))
        or prior.get("name")
        or "not recorded"
    )
    encoding = prior.get("encoding") or "not recorded"
    settings = {k: v for k, v in ident.items() if k not in ("provider", "method", "model_type")}
    settings.update({k: v for k, v in prior.items() if k not in ("provider", "name", "encoding")})
    source = repo_id or "path/to/this/folder"
    lines = [
        "---",
        "library_name: spt-adapter",
        "tags:",
        "- spt-adapter",
        "- image-restoration",
        "- sam-prior",
        f"- {f['backbone_class'].lower()}",
        "---",
        "",
        f"# SPT adapter for {f['backbone_class']}",
        "",
        "SAM prior tuning (SPT) units for a frozen image-restoration backbone "
        "([arXiv 2305.13620](https://arxiv.org/abs/2305.13620)). This repository holds **only the units** "
        f"({f['parameters']:,} parameters in {f['tensors']} tensors, file `{ADAPTER_FILENAME}`); the backbone's "
        "weights are not included: load it from its own checkpoint.",
        "",
        "## Backbone",
        "",
        f"- architecture: `{f['backbone_class']}`",
        f"- integration / preset: `{f['integration'] or 'none'}` / `{f['preset'] or 'none'}`",
        "- backbone weights sha256: "
        + (
            f"`{f['backbone_sha256']}` (checked on load)"
            if f["backbone_sha256"]
            else "not recorded (shapes are checked on load)"
        ),
    ]
    trained_on = _checkpoint_name(training)
    if trained_on:
        lines.append(f"- checkpoint the units were trained on: `{trained_on}` (the training record's file name)")
    lines += [
        "",
        "## Targets",
        "",
        f"Patterns: `{json.dumps(f['patterns'])}`",
        "",
        "| module | class | unit channels |",
        "|---|---|---|",
    ]
    for path_, cls, channels in f["targets"]:
        lines.append(f"| `{path_}` | `{cls}` | {channels if channels is not None else '?'} |")
    lines += [
        "",
        "## Units and prior",
        "",
    ]
    if f["prior_channels"] == 0:  # prior "none": no encoder, nothing to compute beside the image
        lines += [
            f"- fusion: `{f['fusion']}`, width {f['hidden']}, no prior encoder",
            "- prior: none (the units read no prior; no segmenter at inference)",
        ]
    else:
        lines += [
            f"- fusion: `{f['fusion']}`, encoder width {f['hidden']}, depth {f['depth']}",
            f"- prior: {f['prior_channels']} channel(s), resized with `{f['prior_resize']}`",
            f"- prior provider: `{provider}`",
            f"- prior encoding: `{encoding}`",
        ]
    if settings and f["prior_channels"] != 0:
        lines.append(f"- prior settings: `{json.dumps(settings, sort_keys=True)}`")
    lines += ["", "## Training", ""]
    if training:
        for key in sorted(training):
            lines.append(f"- {key}: {training[key]}")
    else:
        lines.append("Not recorded.")
    lines += [
        "",
        "## How to load",
        "",
        "```python",
        "import spt_adapter",
        "backbone = ...  # the original, untouched backbone with its pretrained weights",
        f"model = spt_adapter.from_pretrained(backbone, {_yaml_str(source)})",
        "restored = spt_adapter.restore(model, image)  # HxWx3 uint8 in and out; the prior made as recorded",
        "out = model(lq)  # the units read no prior"
        if f["prior_channels"] == 0
        else "out = model(lq, prior=prior)  # or the tensors: prior (B, C_p, H, W), made as described above",
        "```",
        "",
        "On the command line: `spt-adapter restore photos/ --backbone BACKBONE --adapter "
        + f"{source} --out restored/`.",
        "",
        f"Adapter schema version {f['format_version']}, written by spt-adapter {f['library_version']}.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(
    folder: str | os.PathLike, repo_id: str | None = None, training: dict[str, Any] | None = None
) -> Path:
    """Render the card of ``folder/spt_adapter.safetensors`` into ``folder/README.md`` atomically."""
    from .._io import atomic_write_bytes

    folder = Path(folder)
    text = render_model_card(folder / ADAPTER_FILENAME, repo_id=repo_id, training=training)
    return atomic_write_bytes(folder / MODEL_CARD_FILENAME, text.encode("utf-8"))
