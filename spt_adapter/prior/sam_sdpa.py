"""The ViT image encoder's attention of segment-anything computed by
``torch.nn.functional.scaled_dot_product_attention``, swapped in per model instance for a while.

segment-anything's ``Attention.forward`` (``segment_anything/modeling/image_encoder.py``) forms the
full ``(B * heads, N, N)`` score matrix ``(q * scale) @ k^T``, adds the decomposed relative-position
terms of ``add_decomposed_rel_pos`` (``rel_h[q, kh] + rel_w[q, kw]``, both computed from the
*unscaled* ``q``), takes the softmax and multiplies by ``v``. :func:`sdpa_attention_forward` computes
the same quantity with the relative-position terms passed to SDPA as an additive float
``attn_mask`` of shape ``(B, heads, N, N)``; SDPA's default scale ``1 / sqrt(head_dim)`` is
segment-anything's ``head_dim ** -0.5``. On CUDA this lets PyTorch pick a fused kernel (the
memory-efficient one accepts a float mask) instead of materialising scores and softmax in fp32.

:func:`sdpa_attention` swaps the ``forward`` of the encoder's own ``Attention`` *instances* (an
instance attribute shadows the class method for ``nn.Module.__call__``) and always restores them,
also when the body raises; the ``Attention`` class and every other model are never touched.
"""

from __future__ import annotations

import types
from contextlib import contextmanager

_MISSING = object()


def sdpa_attention_forward(attn, x):
    """``segment_anything.modeling.image_encoder.Attention.forward(x)`` for the module ``attn``,
    through ``scaled_dot_product_attention``. ``x``: ``(B, H, W, C)``; returns ``(B, H, W, C)``."""
    import torch
    import torch.nn.functional as F
    from segment_anything.modeling.image_encoder import get_rel_pos

    b, h, w, _ = x.shape
    heads = attn.num_heads
    # (B, H*W, 3, heads, d) -> three (B, heads, H*W, d) views
    q, k, v = attn.qkv(x).reshape(b, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    d = q.shape[-1]
    bias = None
    if attn.use_rel_pos:
        rh = get_rel_pos(h, h, attn.rel_pos_h)  # (H query rows, H key rows, d)
        rw = get_rel_pos(w, w, attn.rel_pos_w)  # (W query cols, W key cols, d)
        qg = q.reshape(b * heads, h, w, d)
        rel_h = torch.einsum("nyxc,ykc->nyxk", qg, rh)  # (B*heads, H, W, H): query (y, x) vs key row k
        rel_w = torch.einsum("nyxc,xkc->nyxk", qg, rw)  # (B*heads, H, W, W): query (y, x) vs key col k
        # score bias of query (y, x) for key (ky, kx) = rel_h[..., ky] + rel_w[..., kx]
        bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, heads, h * w, h * w).to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # scale: 1/sqrt(d), as attn.scale
    out = out.view(b, heads, h, w, d).permute(0, 2, 3, 1, 4).reshape(b, h, w, heads * d)
    return attn.proj(out)


def attention_modules(image_encoder) -> list:
    """The segment-anything ``Attention`` modules inside ``image_encoder`` (one per ViT block)."""
    from segment_anything.modeling.image_encoder import Attention

    return [m for m in image_encoder.modules() if isinstance(m, Attention)]


@contextmanager
def sdpa_attention(image_encoder):
    """Within the block, every ``Attention`` instance of ``image_encoder`` runs
    :func:`sdpa_attention_forward`; on exit (normal or by an exception) each instance gets back
    exactly the ``forward`` it had (its own instance attribute if it had one, else the class's).
    Yields the number of modules swapped."""
    swapped = []
    try:
        for m in attention_modules(image_encoder):
            swapped.append((m, m.__dict__.get("forward", _MISSING)))
            m.forward = types.MethodType(sdpa_attention_forward, m)
        yield len(swapped)
    finally:
        for m, previous in reversed(swapped):
            if previous is _MISSING:
                del m.forward
            else:
                m.forward = previous
