"""FastMaskGenerator(precision="bf16") and the SDPA attention swap, on a tiny random-weight SAM
built from segment-anything's own classes (spt_adapter.prior.tiny)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("segment_anything")

from segment_anything import SamAutomaticMaskGenerator  # noqa: E402
from segment_anything.modeling.image_encoder import Attention  # noqa: E402

from spt_adapter.errors import PriorError  # noqa: E402
from spt_adapter.prior import FastMaskGenerator, load_sam  # noqa: E402
from spt_adapter.prior.sam_sdpa import attention_modules, sdpa_attention, sdpa_attention_forward  # noqa: E402
from spt_adapter.prior.tiny import build_sam_vit_tiny, make_tiny_sam_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"points_per_side": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return make_tiny_sam_checkpoint(tmp_path_factory.mktemp("sam") / "tiny.pth")


@pytest.fixture(scope="module")
def sam(tiny_ckpt):
    return load_sam(tiny_ckpt, "vit_tiny", "cpu")


@pytest.fixture(scope="module")
def image():
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[::8, ::8])


def _encoder_with_rel_pos(dtype):
    """The tiny encoder with non-zero relative-position tables (segment-anything zero-initialises
    them, which would make the bias term vanish and hide a wrong bias)."""
    torch.manual_seed(1)
    enc = build_sam_vit_tiny().image_encoder.to(dtype)
    with torch.no_grad():
        for m in attention_modules(enc):
            m.rel_pos_h.normal_(0.0, 0.5)
            m.rel_pos_w.normal_(0.0, 0.5)
    return enc


def _tolerance(m: Attention, x: torch.Tensor, eps: float) -> float:
    """First-order forward-error bound for the difference of two orderings of the same attention.

    Each stage is a sum whose rounding error is at most ~n*eps times the sum of the absolute values
    of its terms (the gamma_n bound), with n the reduction length: C for the qkv projection, d for
    the scores and the two relative-position einsums, N keys for the softmax normalisation and for
    attn @ v, C for the output projection. The attention output is a convex combination of rows of
    v, so ||W_proj||_inf * max|v| + max|b_proj| bounds the absolute terms summed into the output.
    A score error delta changes the softmax weights by a relative 2*delta at most; delta is bounded
    by the score magnitude (|q||k| * scale + |q| * (|R_h| + |R_w|), per coordinate, times d) * eps.
    Both results are held to the sum of the two first-order bounds (each one is the same size)."""
    with torch.no_grad():
        b, h, w, c = x.shape
        qkv = m.qkv(x).reshape(b, h * w, 3, m.num_heads, -1)
        q, k, v = (qkv[:, :, i].abs().max().item() for i in range(3))
        d, n = qkv.shape[-1], h * w
        rel = (m.rel_pos_h.abs().max() + m.rel_pos_w.abs().max()).item() if m.use_rel_pos else 0.0
        out_scale = m.proj.weight.abs().sum(1).max().item() * v + m.proj.bias.abs().max().item()
        score_err = eps * d * (q * k * m.scale + q * rel)
        one = out_scale * (eps * (2 * c + 3 * d + 2 * n) + 2 * score_err)
    return 2 * one


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sdpa_attention_equals_stock_attention(dtype):
    enc = _encoder_with_rel_pos(dtype)
    eps = torch.finfo(dtype).eps
    torch.manual_seed(2)
    mods = attention_modules(enc)
    assert len(mods) == 2 and mods[0].use_rel_pos
    # block 0 attends in 4x4 windows, block 1 globally over the 16x16 grid
    for m, x in zip(
        mods, (torch.randn(6, 4, 4, 64, dtype=dtype), torch.randn(2, 16, 16, 64, dtype=dtype)), strict=True
    ):
        with torch.no_grad():
            stock = m(x)
            ours = sdpa_attention_forward(m, x)
            tol = _tolerance(m, x, eps)
            assert ours.shape == stock.shape and ours.dtype == dtype
            err = (ours - stock).abs().max().item()
            assert err <= tol, (err, tol)
            # the test can fail: leaving out the relative-position bias is far outside the tolerance
            m.use_rel_pos = False
            try:
                no_bias = sdpa_attention_forward(m, x)
            finally:
                m.use_rel_pos = True
            assert (no_bias - stock).abs().max().item() > 100 * tol


def test_sdpa_swap_is_per_instance_and_always_restored():
    enc = _encoder_with_rel_pos(torch.float32)
    other = build_sam_vit_tiny().image_encoder
    mods = attention_modules(enc)
    own = lambda x: x  # noqa: E731 -- an instance that already had its own forward keeps exactly it
    mods[1].forward = own
    class_forward = Attention.forward
    with torch.no_grad():
        with sdpa_attention(enc) as n:
            assert n == 2
            assert all(m.forward.__func__ is sdpa_attention_forward for m in mods)
            assert all("forward" not in m.__dict__ for m in attention_modules(other))
        assert "forward" not in mods[0].__dict__ and mods[1].forward is own
        assert Attention.forward is class_forward
        with pytest.raises(RuntimeError, match="boom"):
            with sdpa_attention(enc):
                raise RuntimeError("boom")
        assert "forward" not in mods[0].__dict__ and mods[1].forward is own
        # an error inside the encoder itself (a wrong input size) restores too
        del mods[1].forward
        with pytest.raises(RuntimeError, match="size of tensor"):
            with sdpa_attention(enc):
                enc(torch.randn(1, 3, 100, 100))
        assert all("forward" not in m.__dict__ for m in mods)


def test_bf16_generator_runs_and_postprocesses_in_float32(sam, image):
    small = {**SETTINGS, "points_per_side": 4}
    gen = FastMaskGenerator(sam, points_per_batch=16, precision="bf16", **small)
    ref = FastMaskGenerator(sam, points_per_batch=16, **small)
    seen = []  # what the last attention returns: bf16 under autocast, fp32 otherwise
    hook = sam.image_encoder.blocks[-1].attn.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    try:
        with torch.inference_mode():
            (feat,), (in_size,) = gen._encode([image])
            (feat32,), _ = ref._encode([image])
    finally:
        hook.remove()
    assert seen == [torch.bfloat16, torch.float32]
    with torch.inference_mode():
        # bf16 keeps 8 bits of mantissa (unit roundoff 2**-8 = 0.0039); a two-block encoder's
        # embedding stays within a few dozen roundoffs of fp32, while a wrong attention (bias,
        # scale or layout) gives errors of order 1
        rel = ((feat.float() - feat32).norm() / feat32.norm()).item()
        assert rel < 25 * 2.0**-8, rel
        h, w = image.shape[:2]
        pe_dtypes = []  # the prompt encoder's outputs and the dense positional encoding stay float32
        hooks = [
            sam.prompt_encoder.register_forward_hook(lambda mod, inp, out: pe_dtypes.append(out[0].dtype)),
            sam.prompt_encoder.pe_layer.register_forward_hook(lambda mod, inp, out: pe_dtypes.append(out.dtype)),
        ]
        try:
            data = gen._process_crop(feat, in_size, (h, w), [0, 0, w, h], 0, (h, w))
        finally:
            for hk in hooks:
                hk.remove()
        assert len(pe_dtypes) >= 2 and set(pe_dtypes) == {torch.float32}
    assert data["iou_preds"].dtype == torch.float32 and data["stability_score"].dtype == torch.float32
    assert data["masks"].dtype == torch.bool and data["masks"].shape[1:] == (h, w)
    assert all("forward" not in m.__dict__ for m in attention_modules(sam.image_encoder))
    masks = gen.generate(image)
    stock = SamAutomaticMaskGenerator(sam, **small).generate(image)
    assert masks and set(masks[0]) == set(stock[0])
    assert all(m["segmentation"].shape == (h, w) and m["segmentation"].dtype == bool for m in masks)
    assert all(isinstance(m["predicted_iou"], float) and isinstance(m["stability_score"], float) for m in masks)


def test_default_precision_is_fp32_and_unknown_is_refused(sam):
    # the default is the exact path: tests/test_prior_sam.py::test_fast_generator_identical_to_stock
    # checks it against stock field by field, bit for bit
    assert FastMaskGenerator(sam).precision == "fp32"
    with pytest.raises(PriorError, match="unknown precision 'fp16'; choose one of fp32, bf16"):
        FastMaskGenerator(sam, precision="fp16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_on_cuda(tiny_ckpt, image):  # pragma: no cover - CI has no GPU
    cuda_sam = load_sam(tiny_ckpt, "vit_tiny", "cuda")
    masks = FastMaskGenerator(cuda_sam, precision="bf16", **SETTINGS).generate(image)
    assert masks and masks[0]["segmentation"].shape == image.shape[:2]


# ------------------------------------------------------------------ benchmarks/prior_speed.py
def _prior_speed():
    spec = importlib.util.spec_from_file_location("prior_speed", ROOT / "benchmarks" / "prior_speed.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("prior_speed", mod)
    spec.loader.exec_module(mod)
    return mod


def _mask(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return {"segmentation": m}


def test_match_mask_iou():
    match = _prior_speed().match_mask_iou
    a, b, c = _mask(8, 8, 0, 4, 0, 4), _mask(8, 8, 0, 4, 0, 2), _mask(8, 8, 4, 8, 4, 8)
    assert match([a, c], [c, a]) == [1.0, 1.0]  # order does not matter
    assert match([a, c], [a]) == [1.0, 0.0]  # a dropped mask counts as 0
    assert match([a], [b, a]) == [1.0, 0.0]  # greedy: the best pair first, the extra mask counts as 0
    assert match([a], [b]) == [0.5]
    assert match([a], []) == [0.0] and match([], []) == []


def test_prior_speed_quick_run(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert _prior_speed().main(["--quick", "--hit-repeats", "2", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    printed = capsys.readouterr().out.strip().splitlines()
    assert json.loads(printed[-1]) == r  # the last line printed is the JSON object
    assert r["identical"] is True and r["model_type"] == "vit_tiny" and r["images"] == 2
    assert r["bf16"]["masks_stock"] > 0 and 0.0 <= r["bf16"]["min_iou"] <= r["bf16"]["mean_iou"] <= 1.0
    assert r["bf16"]["ratio"] == pytest.approx(r["stock_s"] / r["bf16"]["seconds"])
    assert any(line.startswith("| (d) ours bf16 + SDPA") for line in printed)
