"""Backbone weights in and SPT units on, for the framework shims.

The frameworks load pretrained weights with ``net.load_state_dict``; once SPT units are in, module
names carry ``base_layer`` and the state dict has unit tensors. These helpers load a checkpoint
onto the *logical* backbone (units excluded, ``base_layer`` seen through), so loading works the
same before and after injection — including KAIR's non-strict load, which pairs tensors by
position and would otherwise pair checkpoint tensors with unit tensors. The BasicSR and Restormer
shims also share the resume-delta lookup and the units-only EMA network from here.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from os import path as osp
from typing import Any

import torch
import torch.nn as nn

import spt_adapter
from spt_adapter.core import keys
from spt_adapter.core.model import SPTModel
from spt_adapter.core.planning import input_channels
from spt_adapter.errors import BackboneError as BackboneLoadError
from spt_adapter.errors import BackboneHashMismatchError, ConfigError

from ._options import SPTOptions

LOAD_MODES = ("strict", "by_name", "by_position")


def bare(net: nn.Module) -> nn.Module:
    """The module inside DataParallel / DistributedDataParallel."""
    return (
        net.module
        if hasattr(net, "module") and isinstance(net, (nn.DataParallel, nn.parallel.DistributedDataParallel))
        else net
    )


def logical_state(net: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """The backbone's state dict as the checkpoint names it: units dropped, ``base_layer`` removed."""
    net = bare(net)
    root = net.base_model if isinstance(net, SPTModel) else net
    return OrderedDict(keys.logical_state(root))


def load_backbone_state(
    net: nn.Module, state: Mapping[str, torch.Tensor], mode: str = "strict", source: str = "checkpoint"
) -> list[str]:
    """Copy ``state`` into the backbone of ``net`` (plain or injected). Returns the keys loaded.

    ``strict``: same key set and shapes (else an error naming the first differences);
    ``by_name``: keys present in both with equal shapes (BasicSR's ``strict_load_g: false``);
    ``by_position``: the i-th checkpoint tensor into the i-th backbone tensor (KAIR's
    ``G_param_strict: false``), units never take part.
    """
    if mode not in LOAD_MODES:
        raise BackboneLoadError(f"load mode must be one of {LOAD_MODES}, got {mode!r}")
    mine = logical_state(net)
    pairs: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    if mode == "strict":
        missing = [k for k in mine if k not in state]
        unexpected = [k for k in state if k not in mine]
        if missing or unexpected:
            raise BackboneLoadError(
                f"{source} does not fit the backbone: missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
                f"unexpected {unexpected[:4]}{'...' if len(unexpected) > 4 else ''}"
            )
        pairs = [(k, mine[k], state[k]) for k in mine]
    elif mode == "by_name":
        pairs = [(k, mine[k], state[k]) for k in mine if k in state and tuple(state[k].shape) == tuple(mine[k].shape)]
    else:
        if len(state) != len(mine):
            raise BackboneLoadError(
                f"{source} has {len(state)} tensors but the backbone has {len(mine)}; a positional load needs equal counts"
            )
        pairs = [(k, mine[k], v) for (k, _), v in zip(mine.items(), state.values(), strict=True)]
    for key, dst, src in pairs:
        if tuple(dst.shape) != tuple(src.shape):
            raise BackboneLoadError(
                f"{source}: tensor for {key!r} has shape {tuple(src.shape)}, the backbone has {tuple(dst.shape)}"
            )
    with torch.no_grad():
        for _, dst, src in pairs:
            dst.copy_(src.to(dtype=dst.dtype, device=dst.device))
    return [k for k, _, _ in pairs]


def attach_units(
    net: nn.Module,
    options: SPTOptions,
    adapter: str | None = None,
    adapter_name: str = "default",
    check_backbone_hash: bool = True,
    training: bool = True,
) -> SPTModel:
    """Inject SPT units into a plain backbone (``options.config``; targets from the claiming plugin
    when the block names none), or load them from an adapter file. ``training``: the adapter is to
    be trained further, so it must have the kind of prior the block asks for (for testing, the
    adapter's own config decides)."""
    net = bare(net)
    if isinstance(net, SPTModel):
        return net
    if adapter:
        if training:
            check_adapter_matches(adapter, options)
        try:
            return spt_adapter.load_adapter(
                net, adapter, adapter_name=adapter_name, check_backbone_hash=check_backbone_hash
            )
        except BackboneHashMismatchError as exc:  # the API's override is a Python argument no YAML key sets
            raise exc.with_override(
                f"{adapter} was trained on other backbone weights: point path.pretrain_network_g "
                "(or spt.backbone) at the checkpoint the adapter was trained on"
            ) from None
    config = options.config
    if config.student is not None:  # the student reads what the network reads (1 channel for a grey DnCNN)
        config = dataclasses.replace(config, student={**config.student, "in_channels": input_channels(net)})
    return spt_adapter.inject(net, config=config, adapter_name=adapter_name)


def check_adapter_matches(adapter: str, options: SPTOptions) -> None:
    """An adapter file the shim starts from (``spt.adapter``, or a resume delta) has the kind of prior
    the ``spt`` block asks for: a distilled prior from the same teacher, or no student at all."""
    recorded = spt_adapter.read_adapter_config(adapter)
    if recorded.reads_prior != options.reads_prior:
        has = "units that read a prior" if recorded.reads_prior else f"units that read no prior ({recorded.fusion})"
        wants = "a prior (spt.prior)" if options.reads_prior else "no prior (prior: none, fusion lora / lowrank)"
        raise ConfigError(
            f"{adapter} has {has} but the spt block asks for {wants}: use a matching adapter or spt block"
        )
    if (recorded.student is not None) != options.distilled:
        has = "a distilled prior (a student)" if recorded.student is not None else "no student (a provider prior)"
        wants = "a distilled prior (spt.student)" if options.distilled else "a provider prior (no spt.student)"
        raise ConfigError(
            f"{adapter} has {has} but the spt block asks for {wants}: use a matching adapter or spt block"
        )
    if options.distilled:
        theirs, mine = (recorded.prior or {}).get("teacher"), options.config.prior["teacher"]
        if theirs != mine:
            raise ConfigError(
                f"{adapter} was distilled from teacher {theirs}, but spt.prior names {mine}: continue "
                "with the same teacher (its provider, settings and encoding), or start a new adapter"
            )


def copy_units(src: SPTModel, dst: SPTModel) -> None:
    """dst's unit parameters := src's (same targets)."""
    theirs = dict(src.unit_parameters())
    with torch.no_grad():
        for key, p in dst.unit_parameters():
            p.copy_(theirs[key])


def ema_units(src: SPTModel, dst: SPTModel, decay: float) -> None:
    """dst's units := decay * dst + (1 - decay) * src: the EMA of the trainers, over the units only
    (the frozen backbone is shared bit for bit, so averaging it would be wasted work)."""
    theirs = dict(src.unit_parameters())
    with torch.no_grad():
        for key, p in dst.unit_parameters():
            p.mul_(decay).add_(theirs[key], alpha=1 - decay)


def load_units(net: SPTModel, path: str) -> None:
    """Overwrite the active adapter's units of ``net`` with those of the adapter file ``path``
    (checked against ``net``'s backbone like any load)."""
    active = net.active_adapter
    spt_adapter.load_adapter(net, path, adapter_name="spt_loading")
    try:
        theirs = dict(net.unit_parameters("spt_loading"))
        mine = dict(net.unit_parameters(active))
        if set(theirs) != set(mine):
            raise BackboneLoadError(
                f"{path} adapts other targets than this model's units ({sorted(set(theirs) ^ set(mine))[:3]})"
            )
        with torch.no_grad():
            for key, p in mine.items():
                p.copy_(theirs[key])
    finally:
        net.delete_adapter("spt_loading")
        net.set_adapter(active)


def find_resume_deltas(load_path: str | None) -> dict[str, str]:
    """The SPT deltas saved in place of a missing ``models/net_g_<iter>.pth``.

    On resume, BasicSR and Restormer point ``path.pretrain_network_g`` at ``net_g_<iter>.pth``; the
    shims saved ``net_g_<iter>.safetensors`` (+ ``net_g_ema_<iter>.safetensors``) instead. Returns
    ``{"net_g": ..., "net_g_ema": ...}`` for the files that exist; ``{}`` when ``load_path`` exists
    or has no delta beside it.
    """
    if not load_path or osp.exists(load_path):
        return {}
    delta = osp.splitext(load_path)[0] + ".safetensors"
    if not osp.exists(delta):
        return {}
    found = {"net_g": delta}
    ema = osp.join(osp.dirname(delta), "net_g_ema_" + osp.basename(delta)[len("net_g_") :])
    if osp.exists(ema):
        found["net_g_ema"] = ema
    return found


def resolve_backbone_path(
    configured: str | None, load_path: str | None, resume_deltas: Mapping[str, str], header_key: str
) -> str | None:
    """The backbone checkpoint: ``configured`` (``spt.backbone``) if set; else, on resume, the path
    recorded under ``header_key`` in the ``net_g`` delta's metadata; else ``load_path``."""
    if configured is not None:
        return configured
    if resume_deltas:
        meta, _ = spt_adapter.read_adapter_header(resume_deltas["net_g"])
        return meta.get(header_key) or None
    return load_path


@contextmanager
def ema_decay_deferred(train_opt: MutableMapping[str, Any]) -> Iterator[float]:
    """Hold ``train_opt["ema_decay"]`` at 0 inside the block (so the parent class builds no EMA
    network) and restore it after, also on error. Yields the configured decay (0 when unset)."""
    decay = train_opt.get("ema_decay", 0)
    train_opt["ema_decay"] = 0
    try:
        yield decay
    finally:
        train_opt["ema_decay"] = decay


def build_units_only_ema(
    make_net: Callable[[], nn.Module],
    load_backbone: Callable[[nn.Module], None],
    options: SPTOptions,
    resume_delta: str | None,
    live: nn.Module,
    device: torch.device | str,
) -> SPTModel:
    """The EMA network: a new backbone from ``make_net``, loaded by ``load_backbone``, with units
    from ``resume_delta`` if given, else copied from ``live``'s units; on ``device``, in eval mode."""
    net = make_net()
    load_backbone(net)
    ema = attach_units(net, options, adapter=resume_delta or options.adapter).to(device)
    if resume_delta is None:
        copy_units(bare(live), ema)
    return ema.eval()
