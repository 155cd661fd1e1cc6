"""``spt-adapter demo``: the whole workflow on images that ship with scikit-image, no downloads.

1. Training images (coffee, rocket, motorcycle, immunohistochemistry) and two held-out test
   images (astronaut, chelsea the cat) are written as PNG folders.
2. A small real SwinIR (spandrel's class: 2 RSTBs, 32 channels, window 8) is trained briefly for
   colour denoising (sigma 25) and saved as a safetensors checkpoint in the cache
   (``~/.cache/spt-adapter/demo``): that is the "pretrained backbone". A second run reuses it.
3. The backbone is loaded back through :func:`spt_adapter.load_backbone` (the spandrel plugin
   claims it and proposes one unit per RSTB), priors are computed (SLIC superpixels, or SAM with
   ``--provider-checkpoint``) through the on-disk prior cache, SPT units are injected and trained with
   :func:`spt_adapter.training.train.train_units`: the backbone stays frozen.
4. Backbone vs backbone + SPT on the held-out images: a PSNR/SSIM table, a side-by-side picture
   (LQ | backbone | +SPT | GT) and the training curves.

It is a demo on a handful of small images with minutes of CPU training: it shows the mechanics and
that the units learn; it does not show what the prior is worth beyond the added parameters (the
controlled comparison is ``benchmarks/quality.py``, docs/results.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._io import atomic_write_bytes, write_once_bytes
from .core.config import DEFAULT_FUSION
from .errors import SPTError

TRAIN_IMAGES = ("coffee", "rocket", "motorcycle_left", "immunohistochemistry")
TEST_IMAGES = ("astronaut", "chelsea")
SIGMA = 25


@dataclass
class DemoSettings:
    """Sizes of the demo; :meth:`quick` is the tiny variant the test suite runs."""

    image_size: int = 192  # longer side of each image after resizing
    backbone_embed: int = 32
    backbone_depths: tuple[int, ...] = (2, 2)
    backbone_iters: int = 150
    backbone_batch: int = 8
    backbone_patch: int = 32
    backbone_lr: float = 2e-3
    spt_iters: int = 150
    spt_batch: int = 8
    spt_patch: int = 32
    spt_lr: float = 2e-3
    hidden: int = 16
    fusion: str = DEFAULT_FUSION
    segments: int = 24
    seed: int = 0

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(
            image_size=64,
            backbone_embed=16,
            backbone_depths=(1, 1),
            backbone_iters=6,
            backbone_batch=4,
            backbone_patch=32,
            spt_iters=4,
            spt_batch=4,
            spt_patch=32,
            segments=8,
        )

    def backbone_recipe(self) -> dict[str, Any]:
        keys = (
            "image_size",
            "backbone_embed",
            "backbone_depths",
            "backbone_iters",
            "backbone_batch",
            "backbone_patch",
            "backbone_lr",
            "seed",
        )
        return {
            "sigma": SIGMA,
            "images": list(TRAIN_IMAGES),
            "torch": torch.__version__.split("+")[0],
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if k in keys},
        }


@dataclass
class DemoResult:
    table: str
    mean: dict[str, float]
    paths: dict[str, Path] = field(default_factory=dict)
    backbone_cached: bool = False
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------
def _skimage_image(name: str) -> np.ndarray:
    from skimage import data

    if name == "motorcycle_left":
        img = data.stereo_motorcycle()[0]
    else:
        img = getattr(data, name)()
    return np.ascontiguousarray(img[..., :3])


def _resize_long_side(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    s = size / max(h, w)
    nh, nw = max(int(round(h * s)) // 8 * 8, 16), max(int(round(w * s)) // 8 * 8, 16)
    return np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.BICUBIC))


def write_images(root: Path, settings: DemoSettings) -> tuple[Path, Path]:
    """Write the demo's train/test PNG folders under ``root``; returns (train_dir, test_dir)."""
    from PIL import Image

    folders = {"train": TRAIN_IMAGES, "test": TEST_IMAGES}
    for split, names in folders.items():
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            img = _resize_long_side(_skimage_image(name), settings.image_size)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            path = folder / f"{name}.png"
            if not path.exists() or path.read_bytes() != buf.getvalue():
                atomic_write_bytes(path, buf.getvalue())
    return root / "train", root / "test"


# ---------------------------------------------------------------------------------------------
# the "pretrained" backbone
# ---------------------------------------------------------------------------------------------
def build_swinir(settings: DemoSettings) -> torch.nn.Module:
    from spandrel.architectures.SwinIR.__arch.SwinIR import SwinIR

    depths = list(settings.backbone_depths)
    return SwinIR(
        img_size=settings.backbone_patch,
        in_chans=3,
        embed_dim=settings.backbone_embed,
        depths=depths,
        num_heads=[2] * len(depths),
        window_size=8,
        mlp_ratio=2.0,
        upscale=1,
        img_range=1.0,
        upsampler="",
        resi_connection="1conv",
        drop_path_rate=0.0,
    )


def _noisy_crops(images: list[np.ndarray], batch: int, patch: int, rng: np.random.Generator):
    gts = []
    for _ in range(batch):
        im = images[int(rng.integers(len(images)))]
        y = int(rng.integers(0, im.shape[0] - patch + 1))
        x = int(rng.integers(0, im.shape[1] - patch + 1))
        crop = im[y : y + patch, x : x + patch]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        gts.append(np.ascontiguousarray(crop))
    gt = torch.from_numpy(np.stack(gts)).permute(0, 3, 1, 2).float() / 255
    noise = torch.from_numpy(rng.standard_normal(gt.shape).astype(np.float32)) * (SIGMA / 255)
    return gt + noise, gt


def pretrain_backbone(
    path: Path, train_dir: Path, settings: DemoSettings, progress: bool = True, replace: bool = False
) -> list[dict]:
    """Train the small SwinIR on noisy crops of the training images (all weights) and save it as
    a safetensors state dict at ``path`` (atomically). The cached backbone is written once: when
    another run wrote ``path`` meanwhile, its file is kept (runs that finished with it stay valid)
    unless ``replace`` (``--retrain-backbone``). Returns the loss history."""
    from PIL import Image
    from safetensors.torch import save as st_save

    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(train_dir.glob("*.png"))]
    model = build_swinir(settings).train()
    opt = torch.optim.Adam(model.parameters(), lr=settings.backbone_lr)
    history = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=settings.backbone_iters, desc="pretrain backbone (SwinIR, once)", unit="step", dynamic_ncols=True
        )
    running = 0.0
    for step in range(settings.backbone_iters):
        lr = settings.backbone_lr * 0.5 * (1 + math.cos(math.pi * step / settings.backbone_iters))
        for g in opt.param_groups:
            g["lr"] = lr
        lq, gt = _noisy_crops(images, settings.backbone_batch, settings.backbone_patch, rng)
        loss = torch.nn.functional.l1_loss(model(lq), gt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running += loss.item()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % 10 == 0 or step + 1 == settings.backbone_iters:
            history.append({"step": step + 1, "loss": running / (10 if (step + 1) % 10 == 0 else (step + 1) % 10)})
            running = 0.0
    if bar is not None:
        bar.close()
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {
        "spt_adapter_demo_recipe": json.dumps(settings.backbone_recipe(), sort_keys=True),
        "history": json.dumps(history),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    if replace:
        atomic_write_bytes(path, st_save(state, metadata=meta))
    else:
        write_once_bytes(path, st_save(state, metadata=meta))
    return history


def backbone_path(cache_dir: Path, settings: DemoSettings) -> Path:
    digest = hashlib.sha256(json.dumps(settings.backbone_recipe(), sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir / "demo" / f"swinir_demo_denoise{SIGMA}_{digest}.safetensors"


def _backbone_history(path: Path) -> list[dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return json.loads((fh.metadata() or {}).get("history", "[]"))


# ---------------------------------------------------------------------------------------------
# pictures
# ---------------------------------------------------------------------------------------------
def side_by_side(rows: list[list[tuple[str, np.ndarray]]]) -> bytes:
    """Rows of (caption, image) panels, stacked vertically, as PNG bytes."""
    from PIL import Image

    from .inference.evaluate import compare_strip

    strips = [compare_strip(r) for r in rows]
    w = max(s.width for s in strips)
    h = sum(s.height for s in strips) + 6 * (len(strips) - 1)
    canvas = Image.new("RGB", (w, h), "white")
    y = 0
    for s in strips:
        canvas.paste(s, (0, y))
        y += s.height + 6
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def curve_plot(backbone_hist: list[dict], spt_hist: list[dict], base_val: float | None, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    ax = axes[0]
    ax.plot([r["step"] for r in backbone_hist], [r["loss"] for r in backbone_hist], color="tab:gray")
    ax.set_title("1. backbone pretraining (all weights)")
    ax.set_xlabel("step")
    ax.set_ylabel("L1 loss")
    ax = axes[1]
    rows = [r for r in spt_hist if "loss" in r]
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], color="tab:blue", label="train L1 (units only)")
    ax.set_title("2. SPT units (backbone frozen)")
    ax.set_xlabel("step")
    ax.set_ylabel("L1 loss")
    val = [r for r in spt_hist if "val_psnr" in r]
    if val:
        ax2 = ax.twinx()
        ax2.plot(
            [r["step"] for r in val],
            [r["val_psnr"] for r in val],
            "o-",
            color="tab:orange",
            label="held-out PSNR, +SPT",
        )
        if base_val is not None:
            ax2.axhline(base_val, color="tab:orange", linestyle="--", linewidth=1, label="held-out PSNR, backbone")
        ax2.set_ylabel("PSNR (dB)")
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------
# the whole demo
# ---------------------------------------------------------------------------------------------
def _demo_layout() -> dict[str, Any]:
    """What the demo writes under ``--out`` (a folder maps to its own layout, a file to None)."""
    from .training.train import LOG_CSV, LOG_JSON, STATE_FILE

    run_files = {"spt_adapter.safetensors", STATE_FILE, LOG_CSV, LOG_JSON, "README.md"}
    return {
        "data": {"train": {f"{n}.png": None for n in TRAIN_IMAGES}, "test": {f"{n}.png": None for n in TEST_IMAGES}},
        "adapter": {n: None for n in run_files},
        "eval": {"eval.md": None, "eval.csv": None, "crops": {f"{n}.png": None for n in TEST_IMAGES}},
        "demo_side_by_side.png": None,
        "demo_training_curve.png": None,
    }


def foreign_files(out: Path, layout: dict[str, Any] | None = None, limit: int = 5) -> list[str]:
    """Files and folders under ``out`` the demo did not write (our own temporary files aside): the demo
    replaces its own outputs and would delete, replace or score anything else."""
    layout = _demo_layout() if layout is None else layout
    found: list[str] = []
    if not out.is_dir():
        return found
    for child in sorted(out.iterdir()):
        if child.name.startswith(".") and child.name.endswith(".tmp"):
            continue  # an interrupted atomic write of ours
        want = layout.get(child.name, "missing")
        if want == "missing" or (want is None) == child.is_dir() or (want is not None and child.is_symlink()):
            found.append(str(child))
        elif isinstance(want, dict):
            found += foreign_files(child, want, limit - len(found))
        if len(found) >= limit:
            break
    return found[:limit]


def run_demo(
    out_dir: str | Path = "spt_demo",
    cache_dir: str | Path | None = None,
    settings: DemoSettings | None = None,
    sam_checkpoint: str | None = None,
    device: str | None = None,
    progress: bool = True,
    retrain_backbone: bool = False,
    log=print,
) -> DemoResult:
    """Run the demo; see the module docstring. Returns the table, means and every output path."""
    from .backbones.load import load_backbone
    from .commands.builders import default_cache_root, make_dataset
    from .core.config import SPTConfig
    from .core.model import inject
    from .inference.evaluate import evaluate, make_val_fn
    from .inference.metrics import to_uint8
    from .prior import default_encoding, make_provider
    from .prior.cache import PriorCache
    from .training.train import TrainSettings, train_units

    t0 = time.time()
    settings = settings or DemoSettings()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SPTError(f"--out {out} is a file; the demo writes a folder")
    foreign = foreign_files(out)
    if foreign:
        raise SPTError(
            f"--out {out} holds files the demo did not write ({', '.join(foreign)}); the demo replaces its "
            "own outputs and would delete or score these: choose a new or empty folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    task = f"denoise:{SIGMA}"
    paths: dict[str, Path] = {}

    log(
        f"[1/5] images from scikit-image -> {out / 'data'} (train: {', '.join(TRAIN_IMAGES)}; "
        f"held-out test: {', '.join(TEST_IMAGES)})"
    )
    train_dir, test_dir = write_images(out / "data", settings)

    bb_path = backbone_path(cache_root, settings)
    cached = bb_path.exists() and not retrain_backbone
    if cached:
        log(f"[2/5] backbone: cached {bb_path}")
    else:
        log(f"[2/5] backbone: training a small SwinIR for colour denoising (sigma {SIGMA}); cached at {bb_path}")
        pretrain_backbone(bb_path, train_dir, settings, progress=progress, replace=retrain_backbone)
    backbone_hist = _backbone_history(bb_path)
    paths["backbone"] = bb_path
    bb = load_backbone(bb_path)  # the same path a user's checkpoint takes
    log(
        f"      {type(bb.model).__name__} claimed by plugin {bb.integration!r}, preset {bb.preset!r}: "
        f"targets {bb.targets}"
    )

    if sam_checkpoint:
        provider = make_provider("sam", sam_checkpoint, model_type="auto", device=device)
    else:
        provider = make_provider("slic", n_segments=settings.segments)
    cache = PriorCache(cache_root / "priors")
    log(f"[3/5] priors: {provider!r}, cached in {cache_root / 'priors'}")
    encoding = default_encoding(settings.fusion)
    train_set = make_dataset(
        train_dir, task, provider, cache, encoding=encoding, train=True, patch=settings.spt_patch, seed=settings.seed
    )
    test_set = make_dataset(test_dir, task, provider, cache, encoding=encoding, train=False, seed=settings.seed)
    test_samples = [test_set[i] for i in range(len(test_set))]  # computes (or reads) the test priors once

    torch.manual_seed(settings.seed)
    config = SPTConfig(
        targets=bb.targets,
        fusion=settings.fusion,
        hidden=settings.hidden,
        prior={"provider": provider.identity(), "encoding": encoding, "task": task},
        integration=bb.integration,
        preset=bb.preset,
    )
    spt = inject(bb.model, config=config)
    if device:
        spt.to(device)
    trainable, total = spt.get_nb_trainable_parameters()
    log(
        f"[4/5] SPT units on {len(spt.unit_names())} target(s): {trainable:,} trainable of {total:,} parameters "
        f"({100 * trainable / total:.1f}%); the backbone is frozen"
    )
    val_fn = make_val_fn(lambda: test_samples, task)
    base_val = None
    with torch.no_grad(), spt.disable_adapter():
        base_val = val_fn(spt)["psnr"]
    tsettings = TrainSettings(
        iters=settings.spt_iters,
        batch=settings.spt_batch,
        lr=settings.spt_lr,
        schedule="cosine",
        seed=settings.seed,
        log_every=5,
        val_every=max(settings.spt_iters // 3, 1),
        progress=progress,
    )
    if (out / "adapter").exists():
        import shutil

        shutil.rmtree(out / "adapter")  # the demo starts fresh each time (the backbone is what is cached)
    result = train_units(
        spt,
        train_set,
        tsettings,
        out_dir=out / "adapter",
        val_fn=val_fn,
        training_info={"task": task, "data": "scikit-image demo images", "demo": True},
    )
    assert result.adapter_path is not None and result.log_csv is not None  # out_dir was given
    paths["adapter"] = result.adapter_path
    paths["train_log"] = result.log_csv

    log("[5/5] evaluation on the held-out images")
    ev = evaluate(
        spt,
        test_samples,
        task,
        out / "eval",
        crops=len(test_samples),
        crop_size=96,
        progress=progress,
        total=len(test_samples),
        keep_outputs=True,
    )
    assert ev.table_md is not None and ev.table_csv is not None  # an output folder was given
    paths["table"] = ev.table_md
    paths["table_csv"] = ev.table_csv

    rows = []
    for sample, row, (base8, spt8) in zip(test_samples, ev.rows, ev.outputs, strict=True):
        rows.append(
            [
                ("LQ (noisy, sigma 25)", to_uint8(sample["lq"])),
                (f"backbone {row['backbone_psnr']:.2f} dB", base8),
                (f"+SPT {row['spt_psnr']:.2f} dB", spt8),
                ("GT", to_uint8(sample["gt"])),
            ]
        )
    paths["side_by_side"] = atomic_write_bytes(out / "demo_side_by_side.png", side_by_side(rows))
    paths["curve"] = curve_plot(backbone_hist, result.history, base_val, out / "demo_training_curve.png")
    from .inference.evaluate import markdown_table

    table = markdown_table(ev)
    return DemoResult(table=table, mean=ev.mean, paths=paths, backbone_cached=cached, seconds=time.time() - t0)
