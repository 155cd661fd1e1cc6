"""The prior ladder of ``benchmarks/quality.py``: one fixed batch schedule per seed shared by every
row, the adapted models of each row (units, the prior student, the student that reads the
restoration), their training, evaluation, and the run over seeds x rows (in parallel processes
with ``--jobs``)."""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _quality_data as qd  # noqa: E402
from _backbones import KAIR_NB, _augment, log, sr_unit_targets, unit_targets  # noqa: E402

FUSIONS = ("concat", "sft", "pool")


ROW_TITLES = {
    "a": "(a) frozen backbone",
    "b": "(b) + SPT, segments of LQ",
    "c": "(c) + SPT, constant prior (control)",
    "d": "(d) + SPT, segments of clean (oracle)",
    "e": "(e) full fine-tune",
    "f": "(f) + SPT, SAM masks of LQ",
    "g": "(g) + SPT, distilled prior (student, teacher = clean-image segments)",
    "h": "(h) + SPT, same student, no teacher (control)",
}


#: paired differences printed under each table: (row, reference row)
DIFFS = (("b", "c"), ("d", "c"), ("f", "c"), ("g", "h"), ("g", "c"), ("g", "b"))


ROWS = "abcdefgh"


DEFAULT_SEGMENTER = "felzenszwalb:scale=300,sigma=0.8,min_size=50"  # chosen with --tune on validation


TUNE_CANDIDATES = (
    "slic:region_px=100,compactness=10,sigma=1",
    "slic:region_px=400,compactness=10,sigma=1",
    "slic:region_px=1600,compactness=10,sigma=1",
    "slic:region_px=8000,compactness=10,sigma=1",
    "felzenszwalb:scale=300,sigma=0.8,min_size=50",
    "felzenszwalb:scale=3000,sigma=0.8,min_size=400",
)


def make_schedule(seed: int, steps: int, batch: int, patch: int, pset: qd.PriorSet) -> np.ndarray:
    rng = np.random.default_rng(10_000 + seed)
    n_img, n_real = len(pset.clean), len(pset.noisy[0])
    sched = np.empty((steps, batch, 5), np.int64)
    for s in range(steps):
        for k in range(batch):
            i = int(rng.integers(n_img))
            h, w = pset.noisy[i][0].shape[:2]  # crop positions on the LQ image (= clean for denoising)
            sched[s, k] = (
                i,
                rng.integers(n_real),
                rng.integers(0, h - patch + 1),
                rng.integers(0, w - patch + 1),
                rng.integers(8),
            )
    return sched


def get_batch(sched_step: np.ndarray, patch: int, pset: qd.PriorSet, prior: str):
    lqs, gts, priors = [], [], []
    sc = pset.scale
    for i, r, y, x, aug in sched_step:
        sl = (slice(y, y + patch), slice(x, x + patch))
        gts.append(_augment(pset.clean[i][sc * y : sc * (y + patch), sc * x : sc * (x + patch)], aug))
        lqs.append(_augment(pset.noisy[i][r][sl], aug))
        if prior == "lq":
            p = pset.lq_prior[i][r][sl]
        elif prior == "oracle":
            p = pset.oracle_prior[i][sl]
        elif prior == "sam":
            p = pset.sam_prior[i][r][sl]
        else:
            p = None
        if p is not None:
            priors.append(_augment(p if p.ndim == 3 else p[..., None], aug))
    to_t = lambda arr: torch.from_numpy(np.ascontiguousarray(np.stack(arr))).permute(0, 3, 1, 2)  # noqa: E731
    lq, gt = to_t(lqs), to_t(gts)
    if prior == "const":
        pr = torch.ones(lq.shape[0], pset.prior_channels, patch, patch)
    elif prior == "none":
        pr = None
    else:
        pr = to_t(priors)
    return lq, gt, pr


def restored_view(backbone: nn.Module):
    """``noisy HxWx3 float -> HxWx3 uint8``: the frozen backbone's restoration, for segmenting a cleaner
    picture than the noisy input while using nothing but the input."""

    def view(noisy: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = backbone(torch.from_numpy(np.ascontiguousarray(noisy)).permute(2, 0, 1)[None])
        return qd.to_uint8(out[0].permute(1, 2, 0).numpy())

    return view


def make_spt(backbone: nn.Module, fusion: str, args, seed: int, prior_channels: int, student: bool = False):
    import spt_adapter
    from spt_adapter import SPTConfig

    torch.manual_seed(seed)
    if args.task == "sr4":
        targets = sr_unit_targets(args.sr_convs, args.units)
    else:
        targets = unit_targets(KAIR_NB if args.task == "kair" else args.nb, args.units)
    # the student is built after the units, so every row of a seed starts from the same units
    cfg = SPTConfig(
        targets=targets,
        fusion=fusion,
        hidden=args.hidden,
        depth=args.depth,
        prior_channels=prior_channels,
        student={"in_channels": args.in_channels, "width": args.student_width, "depth": args.student_depth}
        if student
        else None,
    )
    reads_restored = student and args.student_input == "restored"
    if reads_restored:  # the units read a given prior; the student below makes it from [LQ, restored]
        cfg = SPTConfig(
            targets=targets, fusion=fusion, hidden=args.hidden, depth=args.depth, prior_channels=prior_channels
        )
    device = next(backbone.parameters()).device
    model = spt_adapter.inject(
        copy.deepcopy(backbone), config=cfg, example_input=torch.zeros(1, args.in_channels, 32, 32, device=device)
    ).to(args.device)
    if reads_restored:
        from spt_adapter.core.student import PriorStudent

        student_net = PriorStudent(
            prior_channels, in_channels=2 * args.in_channels, width=args.student_width, depth=args.student_depth
        )
        model = StudentReadsRestored(model, RestoredInputStudent(student_net, backbone)).to(args.device)
    return model


class RestoredInputStudent(nn.Module):
    """``--student-input restored``: the prior student reads the LQ input next to the frozen backbone's
    own restoration of it, ``[LQ, backbone(LQ)]`` (the frozen network removes most of the degradation;
    arXiv 2403.16368 fuses SAM masks with the original network's output the same way). Costs one more
    backbone forward (no gradient) per image at training and at inference, beside the student's own."""

    def __init__(self, net: nn.Module, frozen: nn.Module) -> None:
        super().__init__()
        self.net = net
        self._frozen = [frozen]  # not a submodule: never trained, saved or switched to train mode

    def logits(self, lq: torch.Tensor) -> torch.Tensor:
        frozen = self._frozen[0]
        if next(frozen.parameters()).device != lq.device:
            frozen.to(lq.device)
        with torch.no_grad():
            restored = frozen(lq)
        return self.net.logits(torch.cat([lq, restored], dim=1))


class StudentReadsRestored(nn.Module):
    """An SPTModel whose units read the prior of a :class:`RestoredInputStudent`; the same calls as a
    distilled SPTModel (``student()``, ``model(x, return_prior_logits=True)``), so rows g/h train and
    test it unchanged."""

    def __init__(self, spt: nn.Module, student: RestoredInputStudent) -> None:
        super().__init__()
        self.spt, self.prior_student = spt, student

    def student(self) -> RestoredInputStudent:
        return self.prior_student

    def forward(self, lq: torch.Tensor, return_prior_logits: bool = False):
        logits = self.prior_student.logits(lq)
        out = self.spt(lq, prior=torch.sigmoid(logits))
        return (out, logits) if return_prior_logits else out


def _restoration_loss(out: torch.Tensor, gt: torch.Tensor, pset: qd.PriorSet) -> torch.Tensor:
    return torch.mean(torch.abs(out - gt)) if pset.scale > 1 else torch.mean((out - gt) ** 2)


def train_student_alone(
    model: nn.Module, sched: np.ndarray, pset: qd.PriorSet, patch: int, steps: int, lr: float, device: str = "cpu"
) -> None:
    """The distilled prior's first phase: the student alone learns the teacher's map (the oracle
    segmentation of the clean image) by BCE on ``steps`` batches of the seed's schedule; no backbone
    forward, the units untouched."""
    from spt_adapter.training.train import distill_loss

    student = model.student()
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    sched_lr = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.01)
    student.train()
    for step in range(steps):
        lq, _, teacher = get_batch(sched[step % len(sched)], patch, pset, "oracle")
        loss = distill_loss(student.logits(lq.to(device)), teacher.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched_lr.step()


def train_model(
    model: nn.Module,
    sched: np.ndarray,
    pset: qd.PriorSet,
    prior: str,
    lr: float,
    patch: int,
    full: bool = False,
    distill_weight: float | None = None,
    student_steps: int = 0,
    device: str = "cpu",
) -> float:
    """Train ``model`` on the seed's schedule. ``prior="student"``: a distilled adapter; with
    ``distill_weight`` (row g) the student first learns the teacher alone for ``student_steps``
    batches, then loss = restoration + weight x BCE(student, teacher); ``None`` (row h): the
    restoration loss only, from the same start."""
    t0 = time.time()
    distilled = prior == "student"
    if distilled and distill_weight is not None and student_steps:
        train_student_alone(model, sched, pset, patch, student_steps, lr, device)
    params = [p for p in model.parameters() if p.requires_grad]
    if full:
        for p in model.parameters():
            p.requires_grad_(True)
        params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    sched_lr = torch.optim.lr_scheduler.CosineAnnealingLR(opt, len(sched), eta_min=lr * 0.01)
    model.train()
    if distilled:
        from spt_adapter.training.train import distill_loss
    for step in range(len(sched)):
        if distilled:
            lq, gt, teacher = get_batch(sched[step], patch, pset, "oracle" if distill_weight is not None else "none")
            out, logits = model(lq.to(device), return_prior_logits=True)
            loss = _restoration_loss(out, gt.to(device), pset)
            if distill_weight is not None:
                loss = loss + distill_weight * distill_loss(logits, teacher.to(device))
        else:
            lq, gt, pr = get_batch(sched[step], patch, pset, prior)
            out = model(lq.to(device)) if pr is None else model(lq.to(device), prior=pr.to(device))
            loss = _restoration_loss(out, gt.to(device), pset)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched_lr.step()
    model.eval()
    return time.time() - t0


def psnr_rgb(out: np.ndarray, gt: np.ndarray, border: int = 0) -> float:
    """PSNR in dB on every channel (RGB, or the one grey/Y channel), the denoising convention of the
    field: the output rounded to 8 bits as a saved image would be (``spt_adapter.inference.metrics``,
    cross-checked against BasicSR), ``border`` pixels left out at every edge."""
    from spt_adapter.inference.metrics import psnr, to_uint8

    return float(psnr(to_uint8(out), to_uint8(gt), crop_border=border))


def psnr_sr_y(out: np.ndarray, gt: np.ndarray, scale: int) -> float:
    """PSNR in dB for SR x``scale``: the Y channel (BT.601) with ``scale`` pixels cropped from every
    edge, on the 8-bit output (``spt_adapter.inference.metrics.metric_settings("sr:<scale>")``)."""
    from spt_adapter.inference.metrics import metric_settings, psnr, to_uint8

    return float(psnr(to_uint8(out), to_uint8(gt), **metric_settings(f"sr:{scale}")))


def evaluate(model: nn.Module, pset: qd.PriorSet, prior: str, batch: int = 17) -> float:
    """Mean PSNR over the images of ``pset`` (first noise realisation)."""
    return float(np.mean(evaluate_images(model, pset, prior, batch)))


@torch.no_grad()
def evaluate_images(model: nn.Module, pset: qd.PriorSet, prior: str, batch: int = 17) -> list[float]:
    """The PSNR of each image of ``pset`` (first noise realisation), in the set's order."""
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    scores: dict[int, float] = {}
    groups: dict[tuple[int, int], list[int]] = {}
    for i, c in enumerate(pset.clean):
        groups.setdefault(c.shape[:2], []).append(i)
    for idx in groups.values():
        for s in range(0, len(idx), batch):
            chunk = idx[s : s + batch]
            lq = torch.from_numpy(np.stack([pset.noisy[i][0] for i in chunk])).permute(0, 3, 1, 2).to(device)
            if prior in ("none", "student"):
                out = model(lq)
            else:
                if prior == "const":
                    pr = torch.ones(len(chunk), pset.prior_channels, *lq.shape[-2:])
                else:
                    maps = {
                        "lq": lambda i: pset.lq_prior[i][0],
                        "oracle": lambda i: pset.oracle_prior[i],
                        "sam": lambda i: pset.sam_prior[i][0],
                    }[prior]
                    arr = np.stack([maps(i) for i in chunk])
                    pr = torch.from_numpy(arr[:, None] if arr.ndim == 3 else arr.transpose(0, 3, 1, 2).copy())
                out = model(lq, prior=pr.to(device))
            out = out.float().cpu().permute(0, 2, 3, 1).numpy()
            for o, i in zip(out, chunk, strict=True):
                scores[i] = (
                    psnr_sr_y(o, pset.clean[i], pset.scale)
                    if pset.scale > 1
                    else psnr_rgb(o, pset.clean[i], pset.border)
                )
    return [scores[i] for i in range(len(pset.clean))]


ROW_PRIOR = {"b": "lq", "c": "const", "d": "oracle", "f": "sam", "g": "student", "h": "student"}


def run_one(
    args, backbone, train_set: qd.PriorSet, eval_sets: dict[str, qd.PriorSet], seed: int, row: str, fusion: str
) -> tuple[dict[str, list[float]], float]:
    """Train and test one (seed, row, fusion) of the ladder: ({eval name: per-image PSNRs}, training
    seconds)."""
    sched = make_schedule(seed, args.steps, args.batch, args.patch, train_set)
    if row == "e":
        torch.manual_seed(seed)
        model = copy.deepcopy(backbone).to(args.device)
        secs = train_model(model, sched, train_set, "none", args.ft_lr, args.patch, full=True, device=args.device)
        prior = "none"
    else:
        prior = ROW_PRIOR[row]
        model = make_spt(backbone, fusion, args, seed, train_set.prior_channels, student=row in "gh")
        secs = train_model(
            model,
            sched,
            train_set,
            prior,
            args.lr,
            args.patch,
            distill_weight=args.distill_weight if row == "g" else None,
            student_steps=args.student_steps,
            device=args.device,
        )
    return {name: evaluate_images(model, es, prior) for name, es in eval_sets.items()}, secs


_JOB_CONTEXT: dict[str, Any] = {}


def _job_init(context: dict[str, Any]) -> None:
    """Worker-process initialiser of ``--jobs``: the ladder's shared inputs, sent once per process."""
    _JOB_CONTEXT.update(context)
    torch.set_num_threads(context["args"].threads)


def _job(job: tuple[int, str, str]) -> tuple[tuple[int, str, str], dict[str, list[float]], float]:
    c = _JOB_CONTEXT
    scores, secs = run_one(c["args"], c["backbone"], c["train_set"], c["eval_sets"], *job)
    return job, scores, secs


def _encode_sets(args, train_set, eval_sets: dict):
    """(train set, eval sets, regions per test image): the mean region count of the first eval set's
    label priors (before encoding), then every set in ``--encoding``."""
    n_regions = float(np.mean([len(np.unique(p[0])) for p in next(iter(eval_sets.values())).lq_prior]))
    return (
        qd.apply_encoding(train_set, args.encoding),
        {k: qd.apply_encoding(v, args.encoding) for k, v in eval_sets.items()},
        n_regions,
    )


def run_ladder(
    args, backbone, train_set: qd.PriorSet, eval_sets: dict[str, qd.PriorSet], rows: list[str], fusions: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(results, per_image): results[row][fusion or '-'][eval_name] = list of per-seed mean PSNRs;
    per_image = {"images": {eval_name: file names}, "psnr": the same nesting with one list of
    per-image PSNRs per seed} (which pictures a prior helps). With ``args.jobs`` > 1 the trainings run
    in that many processes (spawned; on one GPU with ``--device cuda``); each training depends only on
    (seed, row, fusion), so the numbers are the same as in one process."""
    res: dict[str, Any] = {}
    per_image: dict[str, Any] = {"images": {name: es.names for name, es in eval_sets.items()}, "psnr": {}}
    backbone = backbone.to(args.device)
    for name, es in eval_sets.items():
        frozen = evaluate_images(backbone, es, "none")
        res.setdefault("a", {}).setdefault("-", {})[name] = [float(np.mean(frozen))]
        per_image["psnr"].setdefault("a", {}).setdefault("-", {})[name] = [frozen]
    log("(a) frozen: " + ", ".join(f"{k} {v[0]:.3f}" for k, v in res["a"]["-"].items()))
    jobs = [(seed, r, f) for seed in args.seeds for f in fusions for r in rows if r in ROW_PRIOR]
    jobs += [(seed, "e", "-") for seed in args.seeds if "e" in rows]
    done, t_start = 0, time.time()
    scores_of: dict[tuple[int, str, str], dict[str, list[float]]] = {}

    def record(job, scores, secs):
        nonlocal done
        scores_of[job] = scores
        done += 1
        eta = (time.time() - t_start) / done * (len(jobs) - done)
        log(
            f"seed {job[0]} row {job[1]} fusion {job[2]}: "
            + ", ".join(f"{k} {np.mean(v):.3f}" for k, v in scores.items())
            + f"  (train {secs:.0f}s; {done}/{len(jobs)}, eta {eta / 60:.1f} min)"
        )

    if args.jobs > 1 and len(jobs) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        context = {"args": args, "backbone": backbone.cpu(), "train_set": train_set, "eval_sets": eval_sets}
        with ProcessPoolExecutor(
            min(args.jobs, len(jobs)), mp_context=mp.get_context("spawn"), initializer=_job_init, initargs=(context,)
        ) as pool:
            for fut in as_completed([pool.submit(_job, j) for j in jobs]):
                record(*fut.result())
        backbone.to(args.device)
    else:
        for job in jobs:
            record(job, *run_one(args, backbone, train_set, eval_sets, *job))
    for job in jobs:  # in the order of the seeds, whatever order they finished in
        seed, row, fusion = job
        for name, v in scores_of[job].items():
            res.setdefault(row, {}).setdefault(fusion, {}).setdefault(name, []).append(float(np.mean(v)))
            per_image["psnr"].setdefault(row, {}).setdefault(fusion, {}).setdefault(name, []).append(v)
    return res, per_image


def _make_sam(args):
    if args.sam_checkpoint is None:
        return None
    from spt_adapter.prior import SamMaskProvider

    return SamMaskProvider(str(args.sam_checkpoint), model_type=args.sam_model_type)
