"""Adaptation methods compared on real pretrained networks, on the same batches (issue 28).

A sibling of ``quality.py`` that shares its data, batch schedules, training loop, backbones and report
helpers. For one task, every row of a seed trains on exactly the same batches (``_ladder.make_schedule``)
for the same steps, with the same loss and cosine schedule (``_ladder.train_model``):

  frozen                 the pretrained network as it is
  spt:PRESET             SPT units where a preset puts them (``dncnn``, ``dncnn-light``), constant prior
  unit:KEY=V,...         SPT units of any configuration (``fusion=lowrank,hidden=2,targets=hidden``)
  lora:params=N,...      LoRA through ``peft.LoraConfig`` on the hidden convs, its ranks spread so the
                         trainable parameters match N (+-10 %); ``params=@ROW`` matches another row
  spt-lora:rank=R,...    LoRA as users get it from this package: ``spt_adapter.inject(fusion="lora")`` (peft's
                         layers; one rank on every target, ``alpha=`` default the rank), saved as a delta file
                         and exported merged (``layers=hidden|light``)
  full                   full fine-tuning
  bitfit                 the biases only

Every row takes ``lr=`` (and LoRA ``alpha=``, ``layers=hidden|light``); every choice is made with
``--split val`` (validation images carved from the training side) and only then run with ``--split test``.

Reported per row: PSNR / SSIM (mean over seeds, std), gain over frozen, trainable parameters (% of the
backbone), adapter file size (safetensors), seconds per training step against full fine-tuning in the same
run, forward time against the frozen network (LoRA merged and unmerged), and peak training memory —
measured on CPU as the bytes of the tensors autograd saves for one training step's backward
(``torch.autograd.graph.saved_tensors_hooks``) plus the trainable parameters' gradients and Adam state.
With ``--equal-time`` each row is also trained for the steps it can take in full fine-tuning's time.

    python benchmarks/compare.py --task cdncnnb75 --dncnn-root <cszn/DnCNN> --split val --seeds 0 \\
        --rows frozen full:lr=1e-4 full:lr=3e-5 lora:params=@spt:dncnn-light,lr=1e-3 --threads 1
    python benchmarks/compare.py --task polyu --polyu-root /path/to/PolyU/CroppedImages ...
    python benchmarks/compare.py --render seed0.json seed1.json seed2.json   # one table over runs per seed

Tasks: ``cdncnnb75`` (CDnCNN-B to sigma 75, CBSD68), ``dncnn3bd`` (DnCNN-3 to x4 BD, Set5 + Set14),
``kair50`` / ``kairjpeg`` (KAIR's DnCNN to sigma 50 / JPEG q30 + sigma 25, Set12), ``polyu`` (CDnCNN-B to
the real camera noise of PolyU: train Canon5D2 + NikonD800, validation held-back scenes of those, test
Canon80D; see :func:`polyu_split`).

Size: one benchmark — its task loaders, row builders (SPT, peft LoRA, full, BitFit), the measurements and the
table — kept together so that every row is built, trained and measured by the same code on the same batches.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _quality_data as qd  # noqa: E402
from _backbones import CDNCNN_B, DNCNN_3, SR_SCALE, kair_degradation, load_dncnn_mat, load_kair_dncnn, log  # noqa: E402
from _ladder import make_schedule, train_model  # noqa: E402
from _report import stats  # noqa: E402

TASKS = ("cdncnnb75", "dncnn3bd", "kair50", "kairjpeg", "polyu")
FAMILIES = ("frozen", "spt", "unit", "lora", "spt-lora", "full", "bitfit")
DEFAULT_LR = {"spt": 1e-3, "unit": 1e-3, "lora": 1e-3, "spt-lora": 1e-3, "full": 1e-4, "bitfit": 1e-3}
#: the rows saved as the package's delta files (``spt_adapter.save_adapter``)
PACKAGE_FAMILIES = ("spt", "unit", "spt-lora")


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def degraded_set(images, *, sigma: float, realisations: int, noise_base: int, jpeg: int = 0) -> qd.PriorSet:
    """The noisy realisations of ``images`` exactly as ``quality.py`` makes them (``qd.add_noise`` with
    ``qd.image_seed``), without segment priors: every row here reads a constant prior or none."""
    clean, noisy = [], []
    for name, img in images:
        clean.append(img.astype(np.float32) / 255.0)
        src = qd.jpeg_compress(img, jpeg) if jpeg else img
        noisy.append(
            [qd.add_noise(src, sigma, qd.image_seed(name, sigma, r, noise_base) + jpeg) for r in range(realisations)]
        )
    return qd.PriorSet(clean, noisy, names=[n for n, _ in images])


def upsampled_sr_set(images, scale: int = SR_SCALE) -> qd.PriorSet:
    """DnCNN-3's x4 BD input (``qd.sr_lq`` then MATLAB bicubic back to the HR size), no priors; PSNR on Y
    with a ``scale``-pixel border, as ``qd.build_upsampled_sr_priors``."""
    from spt_adapter.data.images import imresize_bicubic

    out = qd.PriorSet([], [], scale=1, border=scale, names=[n for n, _ in images])
    for _, hr in images:
        lq = qd.sr_lq(hr, scale, "bd")
        up = imresize_bicubic(lq.astype(np.float64) / 255.0, size=hr.shape[:2]).astype(np.float32)
        out.clean.append(hr.astype(np.float32) / 255.0)
        out.noisy.append([up.reshape(hr.shape)])
    return out


POLYU_TRAIN_CAMERAS = ("Canon5D2", "NikonD800")
POLYU_TEST_CAMERA = "Canon80D"


def polyu_scene(name: str) -> str:
    """``Canon5D2_5_160_3200_chair_11_real.JPG`` -> ``Canon5D2_5_160_3200_chair`` (crops of one scene)."""
    stem = name.rsplit("_", 2)[0]
    return stem


def polyu_split(root: Path) -> dict[str, list[str]]:
    """The PolyU split: file stems (``..._<crop>``) per part. Crops of one scene overlap, so validation
    holds back whole scenes: per training camera, the last scene (sorted by name) with at least 3 crops.
    train: every other Canon5D2 / NikonD800 pair; test: every Canon80D pair (never trained or tuned on)."""
    stems = sorted(p.name[: -len("_real.JPG")] for p in root.glob("*_real.JPG"))
    if not stems:
        raise FileNotFoundError(f"{root} has no *_real.JPG: point --polyu-root at PolyU's CroppedImages")
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for cam in POLYU_TRAIN_CAMERAS:
        mine = [s for s in stems if s.startswith(cam + "_")]
        scenes: dict[str, list[str]] = {}
        for s in mine:
            scenes.setdefault(polyu_scene(s + "_real.JPG"), []).append(s)
        held = sorted(sc for sc, v in scenes.items() if len(v) >= 3)[-1]
        out["val"] += scenes[held]
        out["train"] += [s for s in mine if polyu_scene(s + "_real.JPG") != held]
    out["test"] = [s for s in stems if s.startswith(POLYU_TEST_CAMERA + "_")]
    return out


def polyu_set(root: Path, stems: list[str], crop: int) -> qd.PriorSet:
    """Real noisy / mean (ground-truth) pairs, centre-cropped to ``crop`` (0: as shipped)."""
    out = qd.PriorSet([], [], names=stems)
    for s in stems:
        out.noisy.append([qd.centre_crop(qd.load_rgb(root / f"{s}_real.JPG"), crop).astype(np.float32) / 255.0])
        out.clean.append(qd.centre_crop(qd.load_rgb(root / f"{s}_mean.JPG"), crop).astype(np.float32) / 255.0)
    return out


@dataclass
class Task:
    name: str
    backbone: nn.Module
    train: qd.PriorSet
    evals: dict[str, qd.PriorSet]
    channels: int
    info: dict[str, Any]


def load_task_backbone(args) -> tuple[nn.Module, int]:
    """The task's frozen backbone and its image channels, without its data (for ``--timing-rounds``)."""
    if args.task in ("cdncnnb75", "polyu"):
        net = load_dncnn_mat(args.dncnn_root, CDNCNN_B, "CDnCNN-B")[0]
    elif args.task == "dncnn3bd":
        net = load_dncnn_mat(args.dncnn_root, DNCNN_3, "DnCNN-3")[0]
    else:
        net = load_kair_dncnn(args.kair_root / "model_zoo" / "dncnn_25.pth")
    for p in net.parameters():
        p.requires_grad_(False)
    return net, 3 if args.task in ("cdncnnb75", "polyu") else 1


def load_task(args) -> Task:
    """The backbone, the training set and the evaluation sets (``--split val``: validation; ``test``)."""
    val = args.split == "val"
    if args.task in ("cdncnnb75", "polyu"):
        backbone, info = load_dncnn_mat(args.dncnn_root, CDNCNN_B, "CDnCNN-B")
    elif args.task == "dncnn3bd":
        backbone, info = load_dncnn_mat(args.dncnn_root, DNCNN_3, "DnCNN-3")
    else:
        backbone = load_kair_dncnn(args.kair_root / "model_zoo" / "dncnn_25.pth")
        info = {"arch": "KAIR DnCNN", "path": str(args.kair_root / "model_zoo" / "dncnn_25.pth")}
    for p in backbone.parameters():
        p.requires_grad_(False)
    if args.task == "cdncnnb75":
        sp = qd.load_splits(args.data, n_test=args.n_test, test_crop=args.test_crop)
        train = degraded_set(sp.train, sigma=75.0, realisations=args.realisations, noise_base=1)
        evals = (
            {"McMaster 15-18 σ=75 (val)": degraded_set(sp.val, sigma=75.0, realisations=1, noise_base=2)}
            if val
            else {"CBSD68 σ=75": degraded_set(sp.test, sigma=75.0, realisations=1, noise_base=0)}
        )
        return Task(args.task, backbone, train, evals, 3, info)
    if args.task in ("kair50", "kairjpeg"):
        sigma, jpeg = kair_degradation("sigma50" if args.task == "kair50" else "jpeg30-sigma25")
        sp = qd.load_grey_splits(args.data, args.kair_root / "testsets" / "set12", n_test=args.n_test)
        train = degraded_set(sp.train, sigma=sigma, realisations=args.realisations, noise_base=1, jpeg=jpeg)
        part = sp.val if val else sp.test
        tag = "McMaster 15-18 (val)" if val else "Set12"
        evals = {
            f"{tag} {args.task}": degraded_set(part, sigma=sigma, realisations=1, noise_base=2 if val else 0, jpeg=jpeg)
        }
        return Task(args.task, backbone, train, evals, 1, info)
    if args.task == "dncnn3bd":
        train400 = args.dncnn_root / "TrainingCodes" / "DnCNN_TrainingCodes_v1.0" / "data" / "Train400"
        sp = qd.load_y_sr_splits(args.data, train400, scale=SR_SCALE, n_test=args.n_test)
        train = upsampled_sr_set(sp["train"])
        parts = ["val"] if val else list(qd.SR_TEST)
        evals = {f"{p} ×4 BD (Y)": upsampled_sr_set(sp[p]) for p in parts}
        return Task(args.task, backbone, train, evals, 1, info)
    split = polyu_split(args.polyu_root)
    train = polyu_set(args.polyu_root, split["train"], 0)
    part = "val" if val else "test"
    name = "PolyU held-back scenes (val)" if val else f"PolyU {POLYU_TEST_CAMERA}"
    evals = {name: polyu_set(args.polyu_root, split[part], args.test_crop)}
    info = {**info, "polyu_split": split}
    return Task(args.task, backbone, train, evals, 3, info)


# ---------------------------------------------------------------------------------------------
# rows
# ---------------------------------------------------------------------------------------------
def parse_row(text: str) -> tuple[str, dict[str, str]]:
    """``lora:params=@spt:dncnn-light,lr=1e-3`` -> ("lora", {"params": "@spt:dncnn-light", "lr": "1e-3"});
    ``spt:dncnn`` -> ("spt", {"preset": "dncnn"}) (a bare word after the colon is the preset)."""
    family, _, rest = text.partition(":")
    if family not in FAMILIES:
        raise ValueError(f"row {text!r}: the family must be one of {FAMILIES}")
    opts: dict[str, str] = {}
    if family == "spt" and rest:
        head, _, rest = rest.partition(",")
        opts["preset"] = head
    if family == "lora" and rest.startswith("params=@"):  # the referenced row may itself hold commas
        ref, rest = _split_ref(rest[len("params=@") :])
        opts["params"] = "@" + ref
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"row {text!r}: {item!r} is not KEY=VALUE")
        opts[key] = value
    return family, opts


def _split_ref(text: str) -> tuple[str, str]:
    """``spt:dncnn-light,lr=1e-3`` -> (``spt:dncnn-light``, ``lr=1e-3``): the reference ends before the
    first ``,key=`` whose key is a LoRA option."""
    parts = text.split(",")
    for i in range(1, len(parts)):
        if parts[i].split("=")[0] in ("lr", "alpha", "layers", "rank"):
            return ",".join(parts[:i]), ",".join(parts[i:])
    return text, ""


def hidden_convs(backbone: nn.Module) -> list[str]:
    """The hidden convs of a DnCNN (every Conv2d but the first and the last), the layers every adapter
    row here may adapt."""
    from spt_adapter.backbones.presets import _dncnn_hidden

    return _dncnn_hidden(backbone)


def relu_inputs(backbone: nn.Module) -> list[str]:
    """The activations whose outputs the hidden convs read (``targets=inputs``): a unit there reads a
    hidden conv's input and corrects it, as LoRA reads the input of the conv it adapts."""
    mods = dict(backbone.named_modules())
    out = []
    for name in hidden_convs(backbone):
        parent, _, idx = name.rpartition(".")
        before = f"{parent}.{int(idx) - 1}"
        if not isinstance(mods.get(before), nn.ReLU):
            raise ValueError(f"{name} is not preceded by a ReLU ({before}): targets=inputs is for DnCNNs")
        out.append(before)
    return out


def preset_targets(backbone: nn.Module, name: str) -> list[str]:
    from spt_adapter.backbones.presets import PRESETS

    for p in PRESETS:
        if p.name == name and p.detect(backbone):
            return p.targets(backbone)
    raise ValueError(f"no preset {name!r} recognises this backbone")


def spt_config(backbone: nn.Module, family: str, opts: dict[str, str]):
    from spt_adapter import SPTConfig

    if family == "spt":
        return SPTConfig(targets=preset_targets(backbone, opts.get("preset", "dncnn")), preset=opts.get("preset"))
    fields: dict[str, Any] = {}
    for key, value in opts.items():
        if key in ("lr",):
            continue
        if key == "targets":
            fields["targets"] = (
                hidden_convs(backbone)
                if value == "hidden"
                else relu_inputs(backbone)
                if value == "inputs"
                else preset_targets(backbone, value.replace("preset-", ""))
            )
        elif key in ("hidden", "depth", "prior_channels"):
            fields[key] = int(value)
        elif key == "lora_alpha":
            fields[key] = float(value)
        else:
            fields[key] = value
    fields.setdefault("targets", hidden_convs(backbone))
    return SPTConfig(**fields)


def build_row(backbone: nn.Module, family: str, opts: dict[str, str], seed: int, in_channels: int, match=None):
    """(model, prior kind for ``train_model``, extra info) for one row; the backbone is deep-copied."""
    torch.manual_seed(seed)
    net = copy.deepcopy(backbone)
    if family in ("frozen", "full"):
        return net, "none", {}
    if family == "bitfit":
        for name, p in net.named_parameters():
            p.requires_grad_(name.endswith("bias"))
        return net, "none", {}
    if family in ("spt", "unit"):
        import spt_adapter

        cfg = spt_config(backbone, family, opts)
        model = spt_adapter.inject(net, config=cfg, example_input=torch.zeros(1, in_channels, 32, 32))
        (built,) = model.spt_config.values()  # a unit that reads no prior (lowrank, prior_channels 0) gets none
        return model, "const" if built.reads_prior else "none", {"config": json.loads(built.to_json())}
    if family == "spt-lora":
        return package_lora_model(net, opts, in_channels)
    return lora_model(net, opts, match)


def package_lora_model(net: nn.Module, opts: dict[str, str], in_channels: int):
    """LoRA through the package (``inject(fusion="lora")``) on the same layers as the ``lora`` row: what a
    user of spt-adapter trains, saves and exports."""
    import spt_adapter

    layers = hidden_convs(net) if opts.get("layers", "hidden") == "hidden" else preset_targets(net, "dncnn-light")
    rank = int(opts.get("rank", "1"))
    cfg = spt_adapter.SPTConfig(targets=layers, fusion="lora", hidden=rank, lora_alpha=float(opts.get("alpha", rank)))
    model = spt_adapter.inject(net, config=cfg, example_input=torch.zeros(1, in_channels, 32, 32))
    (built,) = model.spt_config.values()
    return model, "none", {"config": json.loads(built.to_json())}


def merged(model: nn.Module, family: str) -> nn.Module:
    """A LoRA row merged into its backbone's weights, the way each route does it (peft's
    ``merge_and_unload``; the package's export merge); ``model`` itself is not changed."""
    if family == "lora":
        return copy.deepcopy(model).merge_and_unload()
    from spt_adapter.inference.export import merged_lora_backbone

    return merged_lora_backbone(model)


def lora_ranks(layers: list[str], per_rank: dict[str, int], budget: int) -> dict[str, int]:
    """Ranks for ``layers`` whose trainable parameters come closest to ``budget``: every layer gets rank
    ``r`` and the first ``k`` layers ``r + 1`` (LoRA parameters are linear in the rank)."""
    base = sum(per_rank.values())
    r, rest = divmod(budget, base)
    ranks = {n: max(int(r), 1) for n in layers}
    if r >= 1:
        for n in layers:
            if rest < per_rank[n] / 2:
                break
            ranks[n] += 1
            rest -= per_rank[n]
    return ranks


def lora_model(net: nn.Module, opts: dict[str, str], match: int | None):
    """LoRA through ``peft`` on the hidden convs (``layers=hidden``) or the ``dncnn-light`` preset's three
    (``layers=light``), ranks spread to match ``match`` trainable parameters, or ``rank=R`` everywhere."""
    from peft import LoraConfig, get_peft_model

    layers = hidden_convs(net) if opts.get("layers", "hidden") == "hidden" else preset_targets(net, "dncnn-light")
    mods = dict(net.named_modules())
    per_rank = {
        n: mods[n].in_channels * mods[n].kernel_size[0] * mods[n].kernel_size[1] + mods[n].out_channels for n in layers
    }
    if "rank" in opts:
        ranks = {n: int(opts["rank"]) for n in layers}
    else:
        if match is None:
            raise ValueError("a lora row needs rank=R or params=N / params=@ROW")
        ranks = lora_ranks(layers, per_rank, match)
    r0 = min(ranks.values())
    alpha = float(opts.get("alpha", r0))  # peft scales by alpha / r: alpha = r means scale 1
    cfg = LoraConfig(
        r=r0,
        lora_alpha=alpha,
        target_modules=layers,
        rank_pattern={re.escape(n): r for n, r in ranks.items() if r != r0},
        alpha_pattern={re.escape(n): alpha * r / r0 for n, r in ranks.items() if r != r0},
        lora_dropout=0.0,
        bias="none",
    )
    model = get_peft_model(net, cfg)
    return model, "none", {"ranks": sorted(set(ranks.values())), "alpha": alpha}


def trainable(model: nn.Module, family: str) -> int:
    if family == "full":
        return sum(p.numel() for p in model.parameters())
    if family == "frozen":
        return 0
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------------
def adapter_bytes(model: nn.Module, family: str) -> int:
    """Size of the file a user would keep: the SPT delta (``save_adapter``), peft's adapter_model.safetensors,
    the whole network (full FT) or the biases (BitFit), all safetensors."""
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        if family in PACKAGE_FAMILIES:
            import spt_adapter

            path = Path(tmp) / "a.safetensors"
            spt_adapter.save_adapter(model, path)
            return path.stat().st_size
        if family == "lora":
            model.save_pretrained(tmp)
            return (Path(tmp) / "adapter_model.safetensors").stat().st_size
        if family == "frozen":
            return 0
        state = {k: v.contiguous() for k, v in model.state_dict().items() if family == "full" or k.endswith("bias")}
        save_file(state, str(Path(tmp) / "w.safetensors"))
        return (Path(tmp) / "w.safetensors").stat().st_size


def training_memory(model: nn.Module, batch, prior: str, full: bool) -> int:
    """Bytes autograd saves for one training step's backward (a saved-tensor hook sums them; a storage
    saved twice counts once) plus gradients and the two Adam moments of every trainable parameter."""
    lq, gt, pr = batch
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    if full:
        for p in params:
            p.requires_grad_(True)
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(lq) if pr is None else model(lq, prior=pr)
        loss = torch.mean((out - gt) ** 2)
    loss.backward()
    state = sum(3 * p.numel() * p.element_size() for p in params if p.requires_grad)
    for p, f in zip(params, flags, strict=True):
        p.grad = None
        p.requires_grad_(f)
    model.eval()
    return sum(seen.values()) + state


@torch.no_grad()
def forward_seconds(model: nn.Module, x: torch.Tensor, prior: str, repeats: int) -> float:
    """Median seconds of one forward pass on ``x`` (after one warm-up)."""
    model.eval()
    kw = {"prior": torch.ones(x.shape[0], 1, *x.shape[-2:])} if prior == "const" else {}
    model(x, **kw)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x, **kw)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def evaluate_rows(model: nn.Module, pset: qd.PriorSet, prior: str) -> tuple[list[float], list[float]]:
    """Per-image PSNR and SSIM (8-bit output, ``pset.border`` pixels left out; Y for one channel)."""
    from spt_adapter.inference.metrics import psnr, ssim, to_uint8

    model.eval()
    ps, ss = [], []
    for noisy, clean in zip(pset.noisy, pset.clean, strict=True):
        lq = torch.from_numpy(np.ascontiguousarray(noisy[0])).permute(2, 0, 1)[None]
        out = model(lq) if prior == "none" else model(lq, prior=torch.ones(1, 1, *lq.shape[-2:]))
        o8, g8 = to_uint8(out[0].permute(1, 2, 0).numpy()), to_uint8(clean)
        ps.append(float(psnr(o8, g8, crop_border=pset.border)))
        ss.append(float(ssim(o8, g8, crop_border=pset.border)))
    return ps, ss


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
def resolve_budgets(rows: list[str], backbone: nn.Module, in_channels: int) -> dict[str, int]:
    """Trainable parameters of every non-LoRA row (to match LoRA rows against with ``params=@ROW``)."""
    out = {}
    for text in rows:
        family, opts = parse_row(text)
        if family in ("spt", "unit", "spt-lora", "bitfit", "full"):
            model, _, _ = build_row(backbone, family, opts, 0, in_channels)
            out[text] = trainable(model, family)
            out.setdefault(without_lr(text), out[text])  # params=@ROW may leave out the row's lr=
    return out


def without_lr(text: str) -> str:
    """A row spec without its ``lr=`` (the learning rate does not change the parameter count)."""
    family, _, rest = text.partition(":")
    kept = [item for item in rest.split(",") if not item.startswith("lr=")]
    return family + (":" + ",".join(kept) if rest else "")


def lora_budget(opts: dict[str, str], budgets: dict[str, int]) -> int | None:
    if "params" not in opts:
        return None
    value = opts["params"]
    if value.startswith("@"):
        if value[1:] not in budgets:
            raise ValueError(f"params={value}: no row {value[1:]!r} in --rows to match")
        return budgets[value[1:]]
    return int(float(value))


def run(args) -> dict[str, Any]:
    task = load_task(args)
    backbone = task.backbone
    total = sum(p.numel() for p in backbone.parameters())
    log(
        f"{args.task} ({args.split}): {len(task.train.clean)} training images; "
        + ", ".join(f"{k} {len(v.clean)}" for k, v in task.evals.items())
    )
    budgets = resolve_budgets(args.rows, backbone, task.channels)
    x_fwd = torch.rand(1, task.channels, args.forward_size, args.forward_size)
    timed = args.forward_size > 0  # --forward-size 0: no forward timing (validation runs)
    t_frozen = forward_seconds(backbone, x_fwd, "none", args.forward_repeats) if timed else 0.0
    rows_out: dict[str, Any] = {}
    for seed in args.seeds:
        sched = make_schedule(seed, args.steps, args.batch, args.patch, task.train)
        for text in args.rows:
            family, opts = parse_row(text)
            model, prior, extra = build_row(backbone, family, opts, seed, task.channels, lora_budget(opts, budgets))
            lr = float(opts.get("lr", DEFAULT_LR.get(family, 0.0)))
            n_train = trainable(model, family)
            secs = 0.0
            mem = 0
            if family != "frozen":
                from _ladder import get_batch

                mem = training_memory(
                    model, get_batch(sched[0], args.patch, task.train, prior), prior, family == "full"
                )
                secs = train_model(model, sched, task.train, prior, lr, args.patch, full=family == "full")
            scores = {name: evaluate_rows(model, es, prior) for name, es in task.evals.items()}
            rec = rows_out.setdefault(text, {"family": family, "opts": opts, "trainable": n_train, "seeds": []})
            entry: dict[str, Any] = {
                "seed": seed,
                "train_seconds": secs,
                "step_seconds": secs / args.steps if family != "frozen" else 0.0,
                "memory_bytes": mem,
                "psnr": {k: v[0] for k, v in scores.items()},
                "ssim": {k: v[1] for k, v in scores.items()},
                **extra,
            }
            if seed == args.seeds[0] and timed:
                entry["forward_seconds"] = forward_seconds(model, x_fwd, prior, args.forward_repeats)
                if family in ("lora", "spt-lora"):
                    plain = merged(model, family)
                    entry["forward_seconds_merged"] = forward_seconds(plain, x_fwd, "none", args.forward_repeats)
                rec["file_bytes"] = adapter_bytes(model, family)
            elif seed == args.seeds[0]:
                rec["file_bytes"] = adapter_bytes(model, family)
            rec["seeds"].append(entry)
            log(
                f"seed {seed} {text}: "
                + ", ".join(f"{k} {np.mean(v[0]):.3f} dB / {np.mean(v[1]):.4f}" for k, v in scores.items())
                + f"  ({n_train} trainable, train {secs:.0f}s)"
            )
            if args.json:  # after every row: a run stopped early keeps what it measured
                _write(args, task, total, t_frozen, rows_out)
    if args.equal_time:
        equal_time(args, task, budgets, rows_out)
    return _write(args, task, total, t_frozen, rows_out)


def equal_time(args, task: Task, budgets: dict[str, int], rows_out: dict[str, Any]) -> None:
    """Each adapter row trained again for the steps it takes in full fine-tuning's training time of the
    same seed (same schedule, extended; the cosine schedule spans the new length)."""
    fulls = [t for t in rows_out if rows_out[t]["family"] == "full"]
    if not fulls:
        raise SystemExit("--equal-time needs a full row (its training time is the budget)")
    for seed_i, seed in enumerate(args.seeds):
        budget = rows_out[fulls[0]]["seeds"][seed_i]["train_seconds"]
        for text, rec in rows_out.items():
            if rec["family"] in ("frozen", "full"):
                continue
            step = rec["seeds"][seed_i]["step_seconds"]
            steps = max(1, round(budget / step))
            sched = make_schedule(seed, steps, args.batch, args.patch, task.train)
            family, opts = parse_row(text)
            model, prior, _ = build_row(task.backbone, family, opts, seed, task.channels, lora_budget(opts, budgets))
            lr = float(opts.get("lr", DEFAULT_LR.get(family, 0.0)))
            train_model(model, sched, task.train, prior, lr, args.patch)
            scores = {name: evaluate_rows(model, es, prior)[0] for name, es in task.evals.items()}
            rec["seeds"][seed_i]["equal_time"] = {"steps": steps, "psnr": scores}
            log(
                f"seed {seed} {text} equal time ({steps} steps): "
                + ", ".join(f"{k} {np.mean(v):.3f}" for k, v in scores.items())
            )


def _write(args, task: Task, total: int, t_frozen: float, rows_out: dict[str, Any]) -> dict[str, Any]:
    doc = {
        "command": "python benchmarks/compare.py " + " ".join(args.argv),
        "task": args.task,
        "split": args.split,
        "steps": args.steps,
        "batch": args.batch,
        "patch": args.patch,
        "seeds": args.seeds,
        "threads": args.threads,
        "backbone_params": total,
        "forward_size": args.forward_size,
        "forward_seconds_frozen": t_frozen,
        "backbone": {k: v for k, v in task.info.items()},
        "eval_sets": {k: v.names for k, v in task.evals.items()},
        "rows": rows_out,
        "torch": torch.__version__,
        "cpu": os.cpu_count(),
    }
    if args.json:
        from spt_adapter._io import atomic_write_bytes

        atomic_write_bytes(args.json, json.dumps(doc, indent=1).encode())
    return doc


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------
def render(doc: dict[str, Any]) -> str:
    """The markdown table of a run: one block per evaluation set."""
    rows = doc["rows"]
    fulls = [r for r in rows.values() if r["family"] == "full"]
    full_step = float(np.mean([s["step_seconds"] for s in fulls[0]["seeds"]])) if fulls else None
    frozen = [r for r in rows.values() if r["family"] == "frozen"]
    lines = []
    for name in doc["eval_sets"]:
        base = float(np.mean(frozen[0]["seeds"][0]["psnr"][name])) if frozen else None
        lines.append(f"\n#### {name}: {doc['steps']} steps, seeds {doc['seeds']}\n")
        lines.append(
            "| row | trainable (% of backbone) | PSNR (dB) | gain over frozen | SSIM | file | step time vs full FT "
            "| forward vs frozen | training memory | equal wall-clock PSNR |"
        )
        lines.append("| --- |" + " --- |" * 9)
        for text, r in rows.items():
            ps = [float(np.mean(s["psnr"][name])) for s in r["seeds"]]
            ss = [float(np.mean(s["ssim"][name])) for s in r["seeds"]]
            m, sd = stats(ps)
            gain = f"{m - base:+.3f}" if base is not None else "—"
            step = np.mean([s["step_seconds"] for s in r["seeds"]])
            step_cell = f"{step / full_step:.2f}×" if full_step and r["family"] != "frozen" else "—"
            s0 = r["seeds"][0]
            fwd = s0.get("forward_seconds", 0) / (doc["forward_seconds_frozen"] or 1)
            fwd_cell = (
                "—"
                if not doc["forward_seconds_frozen"]
                else f"{fwd:.2f}×"
                + (
                    f" ({s0['forward_seconds_merged'] / doc['forward_seconds_frozen']:.2f}× merged)"
                    if "forward_seconds_merged" in s0
                    else ""
                )
            )
            eq = [s["equal_time"] for s in r["seeds"] if "equal_time" in s]
            eq_cell = (
                f"{np.mean([np.mean(e['psnr'][name]) for e in eq]):.3f} ({int(np.mean([e['steps'] for e in eq]))} steps)"
                if eq
                else ("= equal steps" if r["family"] in ("full", "frozen") else "—")
            )
            lines.append(
                f"| {text} | {r['trainable'] / 1000:.1f} k ({100 * r['trainable'] / doc['backbone_params']:.1f} %) "
                f"| {m:.3f} ± {sd:.3f} | {gain} | {stats(ss)[0]:.4f} | {(r.get('file_bytes') or 0) / 1024:.0f} KiB "
                f"| {step_cell} | {fwd_cell} | {s0['memory_bytes'] / 2**20:.0f} MiB | {eq_cell} |"
            )
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--split", choices=("val", "test"), default="val", help="val: choose; test: report")
    p.add_argument("--rows", nargs="+", required=True, help="row specs (module docstring)")
    p.add_argument("--dncnn-root", type=Path, default=Path(os.environ.get("SPT_DNCNN_ROOT", "/nonexistent")))
    p.add_argument("--kair-root", type=Path, default=Path(os.environ.get("SPT_KAIR_ROOT", "/nonexistent")))
    p.add_argument("--polyu-root", type=Path, default=Path(os.environ.get("SPT_POLYU_ROOT", "/nonexistent")))
    p.add_argument("--data", type=Path, default=qd.DATA_DEFAULT)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch", type=int, default=48)
    p.add_argument("--realisations", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n-test", type=int, default=24, help="first N test images (0: all)")
    p.add_argument("--test-crop", type=int, default=160, help="centre crop of colour test/val images (0: full)")
    p.add_argument("--forward-size", type=int, default=256, help="side of the timed forward input (0: no timing)")
    p.add_argument("--forward-repeats", type=int, default=5)
    p.add_argument("--equal-time", action="store_true")
    p.add_argument(
        "--timing-rounds",
        type=int,
        default=0,
        help="only time the rows (untrained), round-robin over N rounds, and exit: forward and step time "
        "measured side by side, fair on a machine whose load drifts",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    for text in args.rows:
        try:
            parse_row(text)
        except ValueError as exc:
            p.error(str(exc))
    return args


def interleaved_timing(args, backbone: nn.Module, channels: int, rows: list[str], rounds: int) -> dict[str, Any]:
    """Forward and training-step seconds of every row, measured round-robin (one forward and one step of each
    row per round, ``rounds`` rounds, medians), so that a machine whose load drifts during the run slows every
    row alike. Untrained rows: the cost of a forward pass does not depend on the weights."""
    from _ladder import _restoration_loss

    budgets = resolve_budgets(rows, backbone, channels)
    built = {}
    for text in ["frozen", *rows]:
        family, opts = parse_row(text)
        model, prior, _ = build_row(backbone, family, opts, 0, channels, lora_budget(opts, budgets))
        if family == "full":
            for p in model.parameters():
                p.requires_grad_(True)
        params = [p for p in model.parameters() if p.requires_grad]
        built[text] = (family, model, prior, torch.optim.Adam(params, lr=1e-9) if params else None)
        if family in ("lora", "spt-lora"):
            built[text + " (merged)"] = ("frozen", merged(model, family), "none", None)
    x = torch.rand(1, channels, args.forward_size, args.forward_size)
    lq, gt = (
        torch.rand(args.batch, channels, args.patch, args.patch),
        torch.rand(args.batch, channels, args.patch, args.patch),
    )
    fwd: dict[str, list[float]] = {k: [] for k in built}
    step: dict[str, list[float]] = {k: [] for k, v in built.items() if v[3] is not None}
    pset = qd.PriorSet([], [])
    for r in range(rounds + 1):  # round 0 warms up
        for text, (_family, model, prior, opt) in built.items():
            t = forward_seconds(model, x, prior, 1)
            if r:
                fwd[text].append(t)
            if opt is None:
                continue
            model.train()
            t0 = time.perf_counter()
            out = model(lq) if prior == "none" else model(lq, prior=torch.ones(lq.shape[0], 1, *lq.shape[-2:]))
            loss = _restoration_loss(out, gt, pset)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if r:
                step[text].append(time.perf_counter() - t0)
            model.eval()
    return {
        "forward_seconds": {k: statistics.median(v) for k, v in fwd.items()},
        "step_seconds": {k: statistics.median(v) for k, v in step.items()},
        "rounds": rounds,
        "forward_size": args.forward_size,
        "batch": args.batch,
        "patch": args.patch,
    }


def render_timing(doc: dict[str, Any]) -> str:
    f, s = doc["forward_seconds"], doc["step_seconds"]
    full = next((v for k, v in s.items() if k.startswith("full")), None)
    lines = [
        f"\n#### Interleaved timing: forward {doc['forward_size']}² (median of {doc['rounds']} rounds), "
        f"training step batch {doc['batch']} × {doc['patch']}²\n",
        "| row | forward vs frozen | step time vs full FT |",
        "| --- | --- | --- |",
    ]
    for k in f:
        lines.append(
            f"| {k} | {f[k] / f['frozen']:.2f}× | " + (f"{s[k] / full:.2f}×" if k in s and full else "—") + " |"
        )
    return "\n".join(lines)


def merge(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """One run's JSON from several runs of one task, split and step count: runs of the same rows on other
    seeds (``--seeds`` split over processes) and runs of further rows on the same seeds (rows added later)
    both merge. Each row's per-seed entries are concatenated in seed order (a row measured twice on one seed
    is refused); a row's forward timing and file size are those of the first run that has it."""
    out = json.loads(json.dumps(docs[0]))
    for doc in docs[1:]:
        if doc["task"] != out["task"] or doc["split"] != out["split"] or doc["steps"] != out["steps"]:
            raise ValueError("--render merges runs of one task, split and step count")
        for text, rec in doc["rows"].items():
            if text not in out["rows"]:
                out["rows"][text] = json.loads(json.dumps(rec))
                continue
            seen = {s["seed"] for s in out["rows"][text]["seeds"]}
            twice = sorted(seen & {s["seed"] for s in rec["seeds"]})
            if twice:
                raise ValueError(f"--render: row {text!r} is in two runs of seed(s) {twice}")
            out["rows"][text]["seeds"] += rec["seeds"]
        out["seeds"] = sorted(set(out["seeds"]) | set(doc["seeds"]))
    for rec in out["rows"].values():
        rec["seeds"].sort(key=lambda s: s["seed"])
    out["seeds"] = sorted(out["seeds"])
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--render":  # --render A.json [B.json ...]: the table of runs written earlier
        doc = merge([json.loads(Path(p).read_text()) for p in argv[1:]])
        print(render(doc))
        return 0
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    if args.timing_rounds:
        task_backbone = load_task_backbone(args)
        doc = interleaved_timing(args, task_backbone[0], task_backbone[1], args.rows, args.timing_rounds)
        doc["command"] = "python benchmarks/compare.py " + " ".join(args.argv)
        if args.json:
            from spt_adapter._io import atomic_write_bytes

            atomic_write_bytes(args.json, json.dumps(doc, indent=1).encode())
        print(render_timing(doc))
        return 0
    doc = run(args)
    print(render(doc))
    log(f"total wall time {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
