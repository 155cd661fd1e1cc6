"""``vit_tiny``: a SAM built from segment-anything's own classes at a toy size.

No SAM weights can be downloaded in CI, so tests and examples build this model with random
weights, save its state dict like Meta's released checkpoints (a plain ``{name: tensor}`` dict
written with ``torch.save``), and load it through exactly the code path a real checkpoint takes
(:class:`~spt_adapter.prior.sam.SamMaskProvider` with ``model_type="vit_tiny"``)::

    python tools/make_tiny_sam.py /tmp/sam_vit_tiny.pth          # or
    python -m spt_adapter.prior.tiny /tmp/sam_vit_tiny.pth
    spt-adapter masks IMAGES --provider sam --provider-model-type vit_tiny --provider-checkpoint /tmp/sam_vit_tiny.pth --prior-cache C

Shape: ViT encoder with embed_dim 64, depth 2, 2 heads, window 4, global attention in block 1,
image size 256, patch 16 (a 16x16 embedding grid); prompt/mask decoder width 32 with a 2-layer
two-way transformer (MLP 64, 2 heads). Its masks mean nothing (random weights); it exists to run
the real pipeline quickly.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

TINY = {
    "encoder_embed_dim": 64,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": (1,),
    "window_size": 4,
    "image_size": 256,
    "patch_size": 16,
    "prompt_embed_dim": 32,
    "decoder_mlp_dim": 64,
    "decoder_num_heads": 2,
}


def build_sam_vit_tiny(checkpoint=None):
    """Build the ``vit_tiny`` SAM (random weights). ``checkpoint`` must be None: weights are loaded
    by :func:`spt_adapter.prior.sam.load_sam`, the same way for every model type."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    if checkpoint is not None:
        raise ValueError(
            "build_sam_vit_tiny builds the architecture only; load weights with spt_adapter.prior.load_sam"
        )
    c = TINY
    grid = c["image_size"] // c["patch_size"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=c["encoder_depth"],
            embed_dim=c["encoder_embed_dim"],
            img_size=c["image_size"],
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=c["encoder_num_heads"],
            patch_size=c["patch_size"],
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=c["encoder_global_attn_indexes"],
            window_size=c["window_size"],
            out_chans=c["prompt_embed_dim"],
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=c["prompt_embed_dim"],
            image_embedding_size=(grid, grid),
            input_image_size=(c["image_size"], c["image_size"]),
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=c["prompt_embed_dim"],
                mlp_dim=c["decoder_mlp_dim"],
                num_heads=c["decoder_num_heads"],
            ),
            transformer_dim=c["prompt_embed_dim"],
            iou_head_depth=3,
            iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    sam.eval()
    return sam


def sharpen_mask_logits(hypernetwork_mlps) -> None:
    """Scale the last layer of each mask-token MLP by 1000 (in place; call it under ``torch.no_grad()``): random
    weights give soft mask logits, sharp ones let some masks pass the stability threshold."""
    for mlp in hypernetwork_mlps:
        mlp.layers[-1].weight.mul_(1000.0)
        mlp.layers[-1].bias.mul_(1000.0)


def save_checkpoint(state: dict, path, wrap_key: str | None = None) -> Path:
    """Save ``state`` (tensors moved to contiguous CPU copies; under ``{wrap_key: ...}`` when given, as
    Meta's SAM 2 checkpoints are) with ``torch.save``, atomically."""
    import io

    import torch

    from .._io import atomic_write_bytes

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    buf = io.BytesIO()
    torch.save({wrap_key: tensors} if wrap_key else tensors, buf)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def make_tiny_sam_checkpoint(path, seed: int = 0) -> Path:
    """Build ``vit_tiny`` with ``torch.manual_seed(seed)`` and save its state dict to ``path``
    (atomically). The file loads with ``torch.load(..., weights_only=True)``."""
    import torch

    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        sam = build_sam_vit_tiny()
        # random weights give near-constant IoU predictions; spread the IoU head's bias so that
        # the default-style thresholds keep some masks and the pipeline has something to show
        with torch.no_grad():
            sam.mask_decoder.iou_prediction_head.layers[-1].bias.copy_(torch.tensor([1.0, 1.0, 1.0, 1.0]))
            # and sharpen the mask logits so that some masks pass the stability threshold (0.95)
            sharpen_mask_logits(sam.mask_decoder.output_hypernetworks_mlps)
    finally:
        torch.random.set_rng_state(gen_state)
    return save_checkpoint(sam.state_dict(), path)


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Write a tiny random-weight SAM checkpoint (model_type vit_tiny).")
    p.add_argument("path", help="output .pth file")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = make_tiny_sam_checkpoint(args.path, seed=args.seed)
    print(
        f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB); use --provider-model-type vit_tiny --provider-checkpoint {out}"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
