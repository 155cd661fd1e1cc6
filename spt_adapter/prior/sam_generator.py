"""The fast automatic mask generator behind the SAM provider: :class:`FastMaskGenerator` returns
exactly the masks of the stock ``SamAutomaticMaskGenerator``, faster.

Speed (:class:`FastMaskGenerator`), without changing a single output bit on CPU:
- the image encoder can run on several images (or crops) per call (``encoder_batch``; off by
  default because batched GEMMs may differ from single-image ones in the last bits on some
  machines -- ``benchmarks/prior_speed.py --encoder-batch N`` checks the masks against stock);
- the mask decoder's first two-way block computes its image-side projections (key/value of the
  token->image attention, query of the image->token attention, ``image + pe``) once per image
  instead of once per prompt, and never materialises the per-prompt copies of the embedding; the
  per-head operands that ``torch.matmul`` would copy for every batch are laid out once per image
  and sliced, so the same ``bmm`` calls run on the same operands;
- later two-way blocks add ``keys + key_pe`` once instead of twice, and the upscaling's
  LayerNorm2d computes ``x - mean`` once (both elementwise, so the same bits);
- predicted-IoU filtering happens before the mask upscaling, so prompts whose three masks all
  fail ``pred_iou_thresh`` are never upscaled, and only kept masks are resized to image size;
- masks stay boolean tensors to the end (no run-length encoding round trip, no deep copies).

``precision="bf16"`` (opt-in; masks then differ slightly from stock's) runs the image encoder and
the mask decoder under ``torch.autocast(bfloat16)`` with the encoder's attention computed by
``scaled_dot_product_attention`` (:mod:`spt_adapter.prior.sam_sdpa`); the prompt encoder and the
dense positional encoding stay float32; the low-resolution mask
logits and predicted IoUs are cast back to float32 before every threshold, the stability score,
the upscaling to image size, boxes and NMS.

Size: one generator whose optimisations must stay bit-identical to the stock generator together
(the decoder helpers below are its own, not shared).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import PriorError, SamUnavailableError
from ..pixels import to_rgb_uint8

GENERATOR_SETTINGS = {  # name -> SamAutomaticMaskGenerator default
    "points_per_side": 32,
    "pred_iou_thresh": 0.88,
    "stability_score_thresh": 0.95,
    "stability_score_offset": 1.0,
    "box_nms_thresh": 0.7,
    "crop_n_layers": 0,
    "crop_nms_thresh": 0.7,
    "crop_overlap_ratio": 512 / 1500,
    "crop_n_points_downscale_factor": 1,
    "min_mask_region_area": 0,
}
SPEED_SETTINGS = {"points_per_batch": 64, "encoder_batch": 1}  # speed/memory only (see encoder_batch note)
PRECISIONS = ("fp32", "bf16")  # FastMaskGenerator(precision=...): fp32 = stock's bits; bf16 = autocast + SDPA


def require_segment_anything():
    try:
        import segment_anything  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError as exc:
        raise SamUnavailableError(
            f"the SAM provider needs the segment-anything package ({exc}); install it with "
            "`pip install spt-adapter[sam]`, or use --provider slic / felzenszwalb"
        ) from exc
    import segment_anything

    return segment_anything


# ------------------------------------------------------------------------------ fast generator
class FastMaskGenerator:
    """Drop-in for ``SamAutomaticMaskGenerator(model, **settings)`` (binary_mask output) that
    returns the same masks, in the same order, faster; ``generate_batch`` encodes several images
    per image-encoder call. ``points_per_batch`` and ``encoder_batch`` only trade memory for speed.

    ``precision``: ``"fp32"`` (default) gives stock's masks bit for bit; ``"bf16"`` runs the image
    encoder (attention through SDPA) and the mask decoder under ``torch.autocast(bfloat16)`` on
    the model's device (CUDA, or CPU for tests) and casts mask logits and IoU predictions back to
    float32 before any post-processing -- faster on a GPU, masks close to but not equal to stock's.
    """

    def __init__(
        self, model, points_per_batch: int = 64, encoder_batch: int = 1, precision: str = "fp32", **settings
    ) -> None:
        require_segment_anything()
        from segment_anything.utils.amg import build_all_layer_point_grids
        from segment_anything.utils.transforms import ResizeLongestSide

        unknown = sorted(set(settings) - set(GENERATOR_SETTINGS))
        if unknown:
            raise PriorError(
                f"unknown SAM generator setting(s) {unknown}; allowed: {sorted(GENERATOR_SETTINGS) + sorted(SPEED_SETTINGS)}"
            )
        s = {**GENERATOR_SETTINGS, **settings}
        if s["points_per_side"] is None or int(s["points_per_side"]) < 1:
            raise PriorError("points_per_side must be a positive integer")
        if points_per_batch < 1 or encoder_batch < 1:
            raise PriorError("points_per_batch and encoder_batch must be >= 1")
        if precision not in PRECISIONS:
            raise PriorError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        if s["min_mask_region_area"] > 0:
            try:
                import cv2  # noqa: F401
            except ImportError as exc:
                raise SamUnavailableError(
                    "min_mask_region_area > 0 needs OpenCV (`pip install opencv-python-headless`)"
                ) from exc
        self.model = model
        self.settings = s
        self.points_per_batch = int(points_per_batch)
        self.encoder_batch = int(encoder_batch)
        self.precision = precision
        self.transform = ResizeLongestSide(model.image_encoder.img_size)
        self.point_grids = build_all_layer_point_grids(
            int(s["points_per_side"]), int(s["crop_n_layers"]), int(s["crop_n_points_downscale_factor"])
        )

    @property
    def device(self):
        return self.model.device

    def _autocast(self):
        """bf16 autocast on the model's device for ``precision="bf16"``; nothing for fp32."""
        import contextlib

        import torch

        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def _run_encoder(self, batch):
        if self.precision == "fp32":
            return self.model.image_encoder(batch)
        from .sam_sdpa import sdpa_attention

        with self._autocast(), sdpa_attention(self.model.image_encoder):
            return self.model.image_encoder(batch)

    # -- image side
    def _prepare(self, image: np.ndarray):
        import torch

        input_image = self.transform.apply_image(image)
        t = torch.as_tensor(input_image, device=self.device).permute(2, 0, 1).contiguous()[None, :, :, :]
        return self.model.preprocess(t), tuple(t.shape[-2:])

    def _encode(self, crops: list[np.ndarray]):
        import torch

        feats: list[torch.Tensor] = []
        sizes: list[tuple[int, ...]] = []
        for start in range(0, len(crops), self.encoder_batch):
            prepared = [self._prepare(c) for c in crops[start : start + self.encoder_batch]]
            batch = torch.cat([p[0] for p in prepared], dim=0)
            out = self._run_encoder(batch)
            feats.extend(out[i : i + 1] for i in range(out.shape[0]))
            sizes.extend(p[1] for p in prepared)
        return feats, sizes

    def generate(self, image) -> list[dict[str, Any]]:
        return self.generate_batch([image])[0]

    def generate_batch(self, images) -> list[list[dict[str, Any]]]:
        import torch
        from segment_anything.utils.amg import generate_crop_boxes

        images = [to_rgb_uint8(im) for im in images]
        jobs: list[tuple[int, list[int], int]] = []  # (image index, crop box, layer)
        for i, im in enumerate(images):
            boxes, layers = generate_crop_boxes(
                im.shape[:2], self.settings["crop_n_layers"], self.settings["crop_overlap_ratio"]
            )
            jobs.extend((i, b, l) for b, l in zip(boxes, layers, strict=True))
        results: list[list[dict]] = []
        per_image: dict[int, list] = {i: [] for i in range(len(images))}
        with torch.inference_mode():
            for start in range(0, len(jobs), self.encoder_batch):
                chunk = jobs[start : start + self.encoder_batch]
                crops = [images[i][b[1] : b[3], b[0] : b[2], :] for i, b, _ in chunk]
                feats, sizes = self._encode(crops)
                for (i, box, layer), feat, in_size, crop in zip(chunk, feats, sizes, crops, strict=True):
                    per_image[i].append(
                        self._process_crop(feat, in_size, crop.shape[:2], box, layer, images[i].shape[:2])
                    )
            for i in range(len(images)):
                results.append(self._finish(per_image[i], images[i].shape[:2]))
        return results

    # -- prompt side
    def _process_crop(self, features, input_size, crop_size, crop_box, layer, orig_size):
        import torch
        from segment_anything.utils.amg import uncrop_boxes_xyxy, uncrop_points
        from torchvision.ops.boxes import batched_nms

        points_scale = np.array(crop_size)[None, ::-1]
        points_for_image = self.point_grids[layer] * points_scale
        parts = []
        with self._autocast():
            shared = self._shared_image_side(features)
        for b in range(0, len(points_for_image), self.points_per_batch):
            part = self._process_batch(
                shared, points_for_image[b : b + self.points_per_batch], input_size, crop_size, crop_box, orig_size
            )
            if part is not None:
                parts.append(part)
        data = _cat(parts, orig_size, self.device)
        keep = batched_nms(
            data["boxes"].float(),
            data["iou_preds"],
            torch.zeros(len(data["boxes"])),
            iou_threshold=self.settings["box_nms_thresh"],
        )
        data = {k: v[keep.to(v.device)] for k, v in data.items()}  # points live on the CPU, like stock's
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = uncrop_points(data["points"], crop_box)
        data["crop_boxes"] = torch.tensor([crop_box for _ in range(len(data["iou_preds"]))])
        return data

    def _shared_image_side(self, features):
        """The parts of the decoder's first two-way block that depend on the image only."""
        import torch

        model = self.model
        dec = model.mask_decoder
        with torch.autocast(self.device.type, enabled=False):  # float32 Fourier features, as for the prompts
            pe = model.prompt_encoder.get_dense_pe()
        dense = model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
            1, -1, model.prompt_encoder.image_embedding_size[0], model.prompt_encoder.image_embedding_size[1]
        )
        src = features + dense
        b, c, h, w = src.shape
        keys = src.flatten(2).permute(0, 2, 1)
        key_pe = pe.flatten(2).permute(0, 2, 1)
        layer0 = dec.transformer.layers[0]
        k = keys + key_pe  # keep segment-anything's (permuted) memory layout: same GEMM, same bits
        t2i = layer0.cross_attn_token_to_image
        i2t = layer0.cross_attn_image_to_token
        # Per-head operands of the shared attentions, laid out as torch.matmul lays out its bmm
        # operands (contiguous (prompts * heads, ...)); repeated for a full prompt batch once per
        # image instead of once per batch, and sliced for each batch.
        ppb = self.points_per_batch
        t2i_kt = t2i._separate_heads(t2i.k_proj(k), t2i.num_heads).permute(0, 1, 3, 2)  # (1, heads, d, hw)
        t2i_v = t2i._separate_heads(t2i.v_proj(keys), t2i.num_heads)  # (1, heads, hw, d)
        i2t_q = i2t._separate_heads(i2t.q_proj(k), i2t.num_heads)
        return {
            "keys": keys,
            "key_pe": key_pe,
            "hw": (c, h, w),
            "t2i_kt": _repeat_heads(t2i_kt, ppb),
            "t2i_v": _repeat_heads(t2i_v, ppb),
            "i2t_q": _repeat_heads(i2t_q, ppb),
        }

    def _decode(self, shared, sparse):
        """MaskDecoder.predict_masks up to (not including) the upscaling; returns what it needs."""
        import torch

        dec = self.model.mask_decoder
        tr = dec.transformer
        n = sparse.shape[0]
        output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(n, -1, -1)
        tokens = torch.cat((output_tokens, sparse), dim=1)
        point_embedding = tokens
        keys, key_pe = shared["keys"], shared["key_pe"]
        layer0 = tr.layers[0]
        # --- first block, image side shared across prompts
        queries = tokens
        if layer0.skip_first_layer_pe:
            queries = layer0.self_attn(q=queries, k=queries, v=queries)
        else:
            attn_out = layer0.self_attn(q=queries + point_embedding, k=queries + point_embedding, v=queries)
            queries = queries + attn_out
        queries = layer0.norm1(queries)
        q = queries + point_embedding
        t2i = layer0.cross_attn_token_to_image
        attn_out = _attention_bmm(
            t2i,
            n,
            q=t2i.q_proj(q),
            kt_rep=shared["t2i_kt"][: n * t2i.num_heads],
            v_rep=shared["t2i_v"][: n * t2i.num_heads],
        )
        queries = queries + attn_out
        queries = layer0.norm2(queries)
        queries = queries + layer0.mlp(queries)
        queries = layer0.norm3(queries)
        q = queries + point_embedding
        i2t = layer0.cross_attn_image_to_token
        attn_out = _attention_bmm(
            i2t, n, q_rep=shared["i2t_q"][: n * i2t.num_heads], k=i2t.k_proj(q), v=i2t.v_proj(queries)
        )
        keys = keys + attn_out
        keys = layer0.norm4(keys)
        # --- the remaining blocks exactly as segment-anything runs them
        for layer in tr.layers[1:]:
            queries, keys = _two_way_block(layer, queries, keys, point_embedding, key_pe)
        q = queries + point_embedding
        k = keys + key_pe
        attn_out = tr.final_attn_token_to_image(q=q, k=k, v=keys)
        queries = queries + attn_out
        queries = tr.norm_final_attn(queries)
        iou_pred = dec.iou_prediction_head(queries[:, 0, :])
        return queries, keys, iou_pred

    def _upscale(self, shared, queries, keys):
        import torch
        from segment_anything.modeling.common import LayerNorm2d

        dec = self.model.mask_decoder
        c, h, w = shared["hw"]
        b = keys.shape[0]
        src = keys.transpose(1, 2).view(b, c, h, w)
        upscaled = src
        for module in dec.output_upscaling:
            upscaled = _layer_norm_2d(module, upscaled) if isinstance(module, LayerNorm2d) else module(upscaled)
        mask_tokens_out = queries[:, 1 : (1 + dec.num_mask_tokens), :]
        hyper_in = torch.stack(
            [dec.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :]) for i in range(dec.num_mask_tokens)], dim=1
        )
        b, c, h, w = upscaled.shape
        return (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)

    def _process_batch(self, shared, points, input_size, crop_size, crop_box, orig_size):
        import torch
        from segment_anything.utils.amg import (
            batched_mask_to_box,
            calculate_stability_score,
            is_box_near_crop_edge,
            uncrop_masks,
        )

        s = self.settings
        model = self.model
        orig_h, orig_w = orig_size
        coords = self.transform.apply_coords(points, crop_size)
        in_points = torch.as_tensor(coords, device=self.device)
        in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=self.device)
        # the prompt encoder stays float32 (bf16 would round the point coordinates' Fourier features)
        sparse, _ = model.prompt_encoder(points=(in_points[:, None, :], in_labels[:, None]), boxes=None, masks=None)
        with self._autocast():
            queries, keys, iou_all = self._decode(shared, sparse)
        iou_pred = iou_all[:, 1:].float()  # multimask output; float32 (a no-op in fp32) before any threshold
        n_masks = iou_pred.shape[1]
        keep = (
            iou_pred.flatten() > s["pred_iou_thresh"]
            if s["pred_iou_thresh"] > 0.0
            else torch.ones(iou_pred.numel(), dtype=torch.bool, device=iou_pred.device)
        )
        if not bool(keep.any()):
            return None
        prompt_needed = keep.view(-1, n_masks).any(dim=1)
        idx = prompt_needed.nonzero().flatten()
        with self._autocast():
            low = self._upscale(shared, queries[idx], keys[idx])[:, 1:]  # (p, 3, h, w)
        low = low.float()  # float32 before upscaling to image size, stability score and the mask threshold
        sel_keep = keep.view(-1, n_masks)[idx].flatten()
        low = low.flatten(0, 1)[sel_keep][:, None]
        masks = model.postprocess_masks(low, input_size, crop_size)[:, 0]
        iou = iou_pred.flatten()[keep]
        pts = torch.as_tensor(points.repeat(n_masks, axis=0))[keep.cpu()]
        stability = calculate_stability_score(masks, model.mask_threshold, s["stability_score_offset"])
        if s["stability_score_thresh"] > 0.0:
            k2 = stability >= s["stability_score_thresh"]
            masks, iou, pts, stability = masks[k2], iou[k2], pts[k2.cpu()], stability[k2]
        masks = masks > model.mask_threshold
        boxes = batched_mask_to_box(masks)
        k3 = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_w, orig_h])
        if not torch.all(k3):
            masks, iou, pts, stability, boxes = masks[k3], iou[k3], pts[k3.cpu()], stability[k3], boxes[k3]
        masks = uncrop_masks(masks, crop_box, orig_h, orig_w)
        return {"masks": masks, "iou_preds": iou, "points": pts, "stability_score": stability, "boxes": boxes}

    def _finish(self, crop_datas, orig_size):
        import torch
        from segment_anything import SamAutomaticMaskGenerator
        from segment_anything.utils.amg import MaskData, box_xyxy_to_xywh, mask_to_rle_pytorch, rle_to_mask
        from torchvision.ops.boxes import batched_nms, box_area

        s = self.settings
        data = {}
        for k in ("masks", "iou_preds", "points", "stability_score", "boxes", "crop_boxes"):
            vals = [d[k].to(crop_datas[0][k].device) if k != "crop_boxes" else d[k] for d in crop_datas]
            data[k] = torch.cat(vals, dim=0) if vals else torch.zeros(0)
        if len(crop_datas) > 1:
            scores = 1 / box_area(data["crop_boxes"])
            scores = scores.to(data["boxes"].device)
            keep = batched_nms(
                data["boxes"].float(), scores, torch.zeros(len(data["boxes"])), iou_threshold=s["crop_nms_thresh"]
            )
            data = {k: v[keep.to(v.device)] for k, v in data.items()}
        masks = data.pop("masks")
        if s["min_mask_region_area"] > 0 and len(masks):
            md = MaskData(rles=mask_to_rle_pytorch(masks), **{k: v for k, v in data.items()})
            md = SamAutomaticMaskGenerator.postprocess_small_regions(
                md, s["min_mask_region_area"], max(s["box_nms_thresh"], s["crop_nms_thresh"])
            )
            md.to_numpy()
            segs = [np.ascontiguousarray(rle_to_mask(r)) for r in md["rles"]]
            data = {k: md[k] for k in data}
        else:
            data = {k: v.detach().cpu().numpy() for k, v in data.items()}
            segs = list(masks.cpu().numpy())
        out = []
        for i, seg in enumerate(segs):
            out.append(
                {
                    "segmentation": seg,
                    "area": int(seg.sum()),
                    "bbox": box_xyxy_to_xywh(data["boxes"][i]).tolist(),
                    "predicted_iou": data["iou_preds"][i].item(),
                    "point_coords": [data["points"][i].tolist()],
                    "stability_score": data["stability_score"][i].item(),
                    "crop_box": box_xyxy_to_xywh(data["crop_boxes"][i]).tolist(),
                }
            )
        return out


def _repeat_heads(x, prompts):
    """(1, heads, a, b) -> contiguous (prompts * heads, a, b): what torch.matmul copies its operand
    to when it is broadcast over ``prompts``; made once and sliced per batch."""
    return x.expand(prompts, -1, -1, -1).reshape(prompts * x.shape[1], x.shape[2], x.shape[3])


def _attention_bmm(attn, n, q=None, q_rep=None, k=None, kt_rep=None, v=None, v_rep=None):
    """``_attention`` where one side is shared by all ``n`` prompts and given pre-repeated
    (``q_rep`` for image->token, ``kt_rep``/``v_rep`` for token->image): the same bmm calls on the
    same operands as ``q @ k.permute(0, 1, 3, 2)`` and ``attn @ v`` make, without copying the
    shared operand for every batch."""
    import torch

    heads = attn.num_heads
    if q_rep is None:
        q = attn._separate_heads(q, heads)
        b, _, tokens, d = q.shape
        qb = q.reshape(b * heads, tokens, d)
    else:
        qb = q_rep
        tokens, d = q_rep.shape[1], q_rep.shape[2]
    if kt_rep is None:
        kt = attn._separate_heads(k, heads).permute(0, 1, 3, 2)
        kt_rep = kt.reshape(n * heads, kt.shape[2], kt.shape[3])
    a = torch.bmm(qb, kt_rep).view(n, heads, tokens, kt_rep.shape[2])
    a = a / math.sqrt(d)
    a = torch.softmax(a, dim=-1)
    if v_rep is None:
        v = attn._separate_heads(v, heads)
        v_rep = v.reshape(n * heads, v.shape[2], v.shape[3])
    out = torch.bmm(a.reshape(n * heads, tokens, a.shape[3]), v_rep).view(n, heads, tokens, v_rep.shape[2])
    out = attn._recombine_heads(out)
    return attn.out_proj(out)


def _two_way_block(layer, queries, keys, query_pe, key_pe):
    """segment_anything's TwoWayAttentionBlock.forward with ``keys + key_pe`` computed once (it
    adds the same two tensors again before the image->token attention)."""
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        attn_out = layer.self_attn(q=q, k=q, v=queries)
        queries = queries + attn_out
    queries = layer.norm1(queries)
    q = queries + query_pe
    k = keys + key_pe
    attn_out = layer.cross_attn_token_to_image(q=q, k=k, v=keys)
    queries = queries + attn_out
    queries = layer.norm2(queries)
    mlp_out = layer.mlp(queries)
    queries = queries + mlp_out
    queries = layer.norm3(queries)
    q = queries + query_pe
    attn_out = layer.cross_attn_image_to_token(q=k, k=q, v=queries)
    keys = keys + attn_out
    keys = layer.norm4(keys)
    return queries, keys


def _layer_norm_2d(norm, x):
    """segment_anything's LayerNorm2d.forward with ``x - u`` computed once (it computes it twice)
    and the elementwise tail done in place."""
    import torch

    u = x.mean(1, keepdim=True)
    d = x - u
    s = d.pow(2).mean(1, keepdim=True)
    d.div_(torch.sqrt(s + norm.eps))
    return d.mul_(norm.weight[:, None, None]).add_(norm.bias[:, None, None])


def _cat(parts, orig_size, device):
    import torch

    if not parts:
        h, w = orig_size
        return {
            "masks": torch.zeros((0, h, w), dtype=torch.bool, device=device),
            "iou_preds": torch.zeros(0, device=device),
            "points": torch.zeros((0, 2), dtype=torch.float64),
            "stability_score": torch.zeros(0, device=device),
            "boxes": torch.zeros((0, 4), dtype=torch.long, device=device),
        }
    return {k: torch.cat([p[k] for p in parts], dim=0) for k in parts[0]}
