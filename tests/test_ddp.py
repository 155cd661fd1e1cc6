"""DistributedDataParallel: 2 CPU processes (gloo, torchrun) give the single-process result.

The trainer seeds every sample's random choices from (seed, epoch, index) and splits each global
batch with a DistributedSampler, so ``torchrun --nproc_per_node 2`` with ``batch=2`` sees exactly
the samples of one process with ``batch=4``; DDP averages the two halves' gradients, which equals
the gradient of the global batch's mean L1 loss. What remains is floating-point summation order.

Tolerance: after 4 Adam steps (lr 1e-3) every unit tensor agrees within 2e-5 absolute (Adam moves
each weight by at most ~lr per step, so 2e-5 is 0.5 % of the total possible movement), and the
logged losses within 1e-5 relative.

This file is also the worker script: ``python tests/test_ddp.py OUT BATCH`` (under torchrun or not).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _data import DATA  # small crops of the test sets, committed (tests/data)

ITERS, GLOBAL_BATCH, STUDENT_STEPS = 4, 4, 2


def _worker(out: str, batch: int, distilled: bool = False) -> None:
    torch.set_num_threads(1)
    import numpy as np
    from PIL import Image
    from spandrel.architectures.DnCNN.__arch.network_dncnn import DnCNN

    import spt_adapter
    from spt_adapter.training.train import TrainSettings, init_distributed, shutdown_distributed, train_units

    class Crops(torch.utils.data.Dataset):
        """Random 32x32 crops of real images with sigma-25 noise and a quantised-luma label prior;
        the crop position and the noise come from the global RNGs (the trainer seeds them)."""

        def __init__(self):
            self.images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((DATA / "Set5").glob("*.png"))]

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            im = self.images[i]
            y, x = np.random.randint(0, im.shape[0] - 32), np.random.randint(0, im.shape[1] - 32)
            gt = torch.from_numpy(im[y : y + 32, x : x + 32].copy()).permute(2, 0, 1).float() / 255
            lq = gt + torch.randn_like(gt) * (25 / 255)
            prior = ((gt.mean(0, keepdim=True) * 4).floor() + 1) / 5
            if distilled:  # the quantised luma as a teacher's map in [0, 1]
                return {"lq": lq, "gt": gt, "teacher_prior": prior, "path": str(i)}
            return {"lq": lq, "gt": gt, "prior": prior, "path": str(i)}

    info = init_distributed("cpu")
    torch.manual_seed(0)
    backbone = DnCNN(in_nc=3, out_nc=3, nc=16, nb=4, act_mode="R")
    student = {"width": 8, "depth": 2} if distilled else None
    model = spt_adapter.inject(backbone, config=spt_adapter.SPTConfig(targets=["model.2", "model.4"], student=student))
    settings = TrainSettings(
        iters=ITERS,
        batch=batch,
        lr=1e-3,
        log_every=1,
        progress=False,
        seed=7,
        student_steps=STUDENT_STEPS if distilled else 0,
    )
    train_units(model, Crops(), settings, out_dir=out, dist_info=info)
    shutdown_distributed(info)


def _run(cmd: list[str], env: dict) -> None:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("distilled", [False, True], ids=["lq-prior", "distilled"])
def test_two_gloo_processes_match_one_process(tmp_path, distilled):
    """``distilled``: a prior student, whose student-only steps run through DDP without the backbone
    (the units unused) before the joint steps."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on PATH")
    from safetensors.torch import load_file

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("WORLD_SIZE", None)
    script = str(Path(__file__).resolve())
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    flag = ["distilled"] if distilled else []
    _run([sys.executable, script, str(single), str(GLOBAL_BATCH), *flag], env)
    _run([torchrun, "--standalone", "--nproc_per_node", "2", script, str(ddp), str(GLOBAL_BATCH // 2), *flag], env)

    a = load_file(single / "spt_adapter.safetensors")
    b = load_file(ddp / "spt_adapter.safetensors")
    assert sorted(a) == sorted(b) and len(a) > 0
    fuse = [k for k in a if ".spt_unit.fuse." in k]  # the zero-initialised layers
    assert fuse and max(float(a[k].abs().max()) for k in fuse) > 1e-4  # the units did train
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"max |single - ddp| over unit tensors: {worst:.3g}")
    # both runs on this machine; they differ only in the order float32 gradients are summed (one
    # batch of 2b vs all-reduce of two batches of b): a few roundoffs per step over ITERS steps
    assert worst <= 2e-5, f"DDP and single-process deltas differ by {worst}"

    log_a = json.loads((single / "train_log.json").read_text())
    log_b = json.loads((ddp / "train_log.json").read_text())
    assert log_b["world_size"] == 2 and log_a["world_size"] == 1
    losses_a = [r["loss"] for r in log_a["history"]]
    losses_b = [r["loss"] for r in log_b["history"]]
    steps = ITERS + (STUDENT_STEPS if distilled else 0)
    assert len(losses_a) == steps == len(losses_b)
    for x, y in zip(losses_a, losses_b, strict=True):
        assert abs(x - y) <= 1e-5 * abs(x), (losses_a, losses_b)  # same machine, summation order only
    assert len(set(losses_a)) == steps  # every step saw other samples


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]), distilled=sys.argv[3:] == ["distilled"])
