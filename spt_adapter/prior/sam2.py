"""SAM 2 mask provider over the real ``sam2`` package (``pip install spt-adapter[sam2]``).

    spt-adapter masks IMAGES --provider sam2 --provider-checkpoint sam2.1_hiera_tiny.pt --prior-cache C

The model is built by SAM 2's own ``build_sam2`` from its packaged Hydra config (read offline
from the installed package) and the checkpoint's ``model`` state dict is loaded strictly with
``torch.load(..., weights_only=True)``; masks come from SAM 2's ``SAM2AutomaticMaskGenerator``
and are flattened into one label image, smaller masks on top (:class:`LabelMasks`).

The config is read from the checkpoint's file name (Meta's names: ``sam2.1_hiera_tiny.pt``,
``sam2_hiera_large.pt``, ...) or given with ``model_type``: one of :data:`MODEL_CONFIGS`'s keys, a
config name inside the sam2 package (``configs/sam2.1/sam2.1_hiera_t.yaml``), or ``tiny_test``:
a toy size of the ``sam2.1_hiera_t`` config (:data:`TINY_TEST_OVERRIDES`, random weights,
``tools/make_tiny_sam2.py``) that tests use to run the real code path quickly; its masks mean
nothing and it is never used for results.

Installed from PyPI as ``rf-sam-2`` (Roboflow's wheel of facebookresearch/sam2: the same
``sam2`` modules as the ``sam2`` 1.1.0 sdist, plus a switch to skip TorchScript, and no CUDA
extension to compile); see docs/prior.md for why.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SamCheckpointError, SamUnavailableError
from ..pixels import to_rgb_uint8
from ..plugins.types import Setting, validate_settings
from .masks import LabelMasks
from .sam import SCHEMA as SAM_SCHEMA
from .sam import CheckpointIdentity

SAM2_CHECKPOINTS_URL = "https://github.com/facebookresearch/sam2#model-description"
#: model type -> (config inside the sam2 package, extra Hydra overrides)
MODEL_CONFIGS = {
    "sam2.1_hiera_tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_large": "configs/sam2.1/sam2.1_hiera_l.yaml",
    "sam2_hiera_tiny": "configs/sam2/sam2_hiera_t.yaml",
    "sam2_hiera_small": "configs/sam2/sam2_hiera_s.yaml",
    "sam2_hiera_base_plus": "configs/sam2/sam2_hiera_b+.yaml",
    "sam2_hiera_large": "configs/sam2/sam2_hiera_l.yaml",
    "tiny_test": "configs/sam2.1/sam2.1_hiera_t.yaml",
}
TINY_TEST_FILE = "sam2_tiny_test.pt"
#: ``tiny_test``: the sam2.1_hiera_t config at a toy width (Hiera embed_dim 8, stages 1-1-2-1,
#: decoder width 32; image size stays 1024 because SAM2ImagePredictor assumes its feature sizes).
TINY_TEST_OVERRIDES = [
    "++model.image_encoder.trunk.embed_dim=8",
    "++model.image_encoder.trunk.num_heads=1",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[4,4]",
    "++model.image_encoder.trunk.window_spec=[4,4,4,4]",
    "++model.image_encoder.neck.d_model=32",
    "++model.image_encoder.neck.position_encoding.num_pos_feats=32",
    "++model.image_encoder.neck.backbone_channel_list=[64,32,16,8]",
    "++model.memory_attention.d_model=32",
    "++model.memory_attention.num_layers=1",
    "++model.memory_attention.layer.d_model=32",
    "++model.memory_attention.layer.dim_feedforward=32",
    "++model.memory_attention.layer.self_attention.embedding_dim=32",
    "++model.memory_attention.layer.cross_attention.embedding_dim=32",
    "++model.memory_attention.layer.cross_attention.kv_in_dim=16",
    "++model.memory_encoder.out_dim=16",
    "++model.memory_encoder.position_encoding.num_pos_feats=16",
    "++model.memory_encoder.mask_downsampler.embed_dim=32",
    "++model.memory_encoder.fuser.layer.dim=32",
    "++model.memory_encoder.fuser.num_layers=1",
    "++model.num_maskmem=2",
]

#: SAM2AutomaticMaskGenerator's settings (its defaults), checked by name and type: SAM's automatic
#: mask generator settings (same meaning), with SAM 2's own defaults and options.
SCHEMA = {
    **{
        name: SAM_SCHEMA[name]
        for name in (
            "points_per_side",
            "points_per_batch",
            "stability_score_thresh",
            "stability_score_offset",
            "box_nms_thresh",
            "crop_n_layers",
            "crop_nms_thresh",
            "crop_overlap_ratio",
            "crop_n_points_downscale_factor",
            "min_mask_region_area",
        )
    },
    "pred_iou_thresh": Setting(float, 0.8, "keep masks whose predicted IoU exceeds this", minimum=0, maximum=1),
    "mask_threshold": Setting(float, 0.0, "logit threshold of a mask pixel"),
    "use_m2m": Setting(bool, False, "one more mask-to-mask refinement step"),
    "multimask_output": Setting(bool, True, "three masks per point prompt"),
}
SPEED = ("points_per_batch",)


def require_sam2():
    try:
        import sam2  # noqa: F401  (initialises Hydra's config module)
        from sam2.build_sam import build_sam2  # noqa: F401
    except ImportError as exc:
        raise SamUnavailableError(
            f"the sam2 provider needs the SAM 2 package ({exc}); install it with "
            "`pip install spt-adapter[sam2]`, or use --provider sam / slic"
        ) from exc
    import sam2

    return sam2


def sam2_version() -> str:
    from importlib import metadata

    for dist in ("rf-sam-2", "sam2"):
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return "sam2 (unknown version)"


def config_for(checkpoint, model_type: str | None = None) -> tuple[str, str, list[str]]:
    """(model type, config name, Hydra overrides) from ``model_type`` or the checkpoint's name."""
    if model_type in (None, "", "auto"):
        stem = Path(checkpoint).name.lower()
        if stem == TINY_TEST_FILE:
            model_type = "tiny_test"
        else:
            model_type = next(
                (k for k in sorted(MODEL_CONFIGS, key=len, reverse=True) if k != "tiny_test" and stem.startswith(k)),
                None,
            )
        if model_type is None:
            raise SamCheckpointError(
                f"SAM 2 checkpoint {checkpoint}: cannot tell its model config from the file name; pass --provider-model-type "
                f"(one of {', '.join(MODEL_CONFIGS)}, or a config name such as configs/sam2.1/sam2.1_hiera_t.yaml)"
            )
    if model_type in MODEL_CONFIGS:
        return model_type, MODEL_CONFIGS[model_type], list(TINY_TEST_OVERRIDES) if model_type == "tiny_test" else []
    if str(model_type).endswith(".yaml"):
        return str(model_type), str(model_type), []
    raise SamCheckpointError(
        f"unknown SAM 2 model type {model_type!r}; choose one of {', '.join(MODEL_CONFIGS)} or a "
        "config name inside the sam2 package (configs/.../*.yaml)"
    )


def build_sam2_model(config: str, overrides: list[str], device="cpu"):
    """SAM 2's ``build_sam2`` with no weights (random init), in eval mode."""
    require_sam2()
    from sam2.build_sam import build_sam2

    try:
        return build_sam2(config, None, device=str(device), hydra_overrides_extra=list(overrides))
    except Exception as exc:  # hydra: config not found / does not compose
        if type(exc).__name__ in ("MissingConfigException", "ConfigCompositionException", "ConfigAttributeError"):
            raise SamCheckpointError(
                f"SAM 2 config {config!r} cannot be composed: {str(exc).splitlines()[0]}"
            ) from None
        raise


def load_sam2(checkpoint, model_type: str | None = None, device=None):
    """Build the checkpoint's SAM 2 with its own classes and load its weights (strict, weights only)."""
    import torch

    require_sam2()
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise SamCheckpointError(
            f"SAM 2 checkpoint {path} not found. Download one (e.g. sam2.1_hiera_tiny.pt) from "
            f"{SAM2_CHECKPOINTS_URL}; or write a tiny test checkpoint with "
            "`python tools/make_tiny_sam2.py PATH` (model type tiny_test)"
        )
    model_type, config, overrides = config_for(path, model_type)
    device = (
        torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SamCheckpointError(
            f"SAM 2 checkpoint {path} cannot be read as a weights-only torch file ({type(exc).__name__})"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SamCheckpointError(f"SAM 2 checkpoint {path} does not hold a state dict of tensors")
    model = build_sam2_model(config, overrides, "cpu")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).split("\n\t")[1] if "\n\t" in str(exc) else str(exc).splitlines()[0]
        raise SamCheckpointError(
            f"SAM 2 checkpoint {path} does not fit model type {model_type!r} ({config}); pass "
            f"the right --provider-model-type; first mismatch: {first.strip()}"
        ) from None
    return model.to(device).eval()


class Sam2MaskProvider(CheckpointIdentity):
    """``Sam2MaskProvider(checkpoint, model_type=None, device=None, **settings)``: SAM 2's automatic
    masks as one label image per image. ``settings``: :data:`SCHEMA` (SAM2AutomaticMaskGenerator's
    arguments); all but ``points_per_batch`` are part of :meth:`identity`. Loaded lazily."""

    name = "sam2"

    def __init__(self, checkpoint, model_type: str | None = None, device=None, **settings) -> None:
        require_sam2()
        self.checkpoint = Path(checkpoint).expanduser()
        if not self.checkpoint.is_file():
            load_sam2(self.checkpoint)  # the "where to get checkpoints" error
        self.model_type, self.config, self.overrides = config_for(self.checkpoint, model_type)
        settings = validate_settings("sam2", SCHEMA, settings)
        self.settings = {k: v.default for k, v in SCHEMA.items() if k not in SPEED}
        self.settings.update({k: v for k, v in settings.items() if k not in SPEED})
        self.speed = {k: settings.get(k, SCHEMA[k].default) for k in SPEED}
        self.device = device
        self._sha256 = None
        self._generator = None

    def identity(self) -> dict:
        return {
            "provider": "sam2",
            "model_type": self.model_type,
            "config": self.config,
            "overrides": self.overrides,
            "checkpoint_sha256": self.checkpoint_sha256,
            "settings": dict(sorted(self.settings.items())),
            "sam2": sam2_version(),
        }

    @property
    def generator(self):
        if self._generator is None:
            from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

            model = load_sam2(self.checkpoint, self.model_type, self.device)
            self._generator = SAM2AutomaticMaskGenerator(
                model, output_mode="binary_mask", **self.speed, **self.settings
            )
        return self._generator

    def generate(self, image) -> LabelMasks:
        import torch

        img = to_rgb_uint8(image)
        with torch.inference_mode():
            masks = self.generator.generate(img)
        return LabelMasks.from_masks(masks, shape=img.shape[:2])

    def generate_batch(self, images) -> list[LabelMasks]:
        return [self.generate(im) for im in images]

    def __getstate__(self):  # DataLoader workers reload the model
        return {**self.__dict__, "_generator": None}

    def __repr__(self) -> str:
        return f"Sam2MaskProvider({str(self.checkpoint)!r}, model_type={self.model_type!r})"


def make_tiny_sam2_checkpoint(path, seed: int = 0) -> Path:
    """Build ``tiny_test`` with SAM 2's classes and ``torch.manual_seed(seed)``, save it like Meta's
    checkpoints (``{"model": state_dict}``), atomically. Random weights: for tests only."""
    import torch

    from .tiny import save_checkpoint, sharpen_mask_logits

    _, config, overrides = config_for(TINY_TEST_FILE, "tiny_test")
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = build_sam2_model(config, overrides, "cpu")
        with torch.no_grad():  # spread the IoU predictions and sharpen the masks so some pass the default thresholds
            model.sam_mask_decoder.iou_prediction_head.layers[-1].bias.fill_(2.0)
            sharpen_mask_logits(model.sam_mask_decoder.output_hypernetworks_mlps)
    finally:
        torch.random.set_rng_state(state)
    return save_checkpoint(model.state_dict(), path, wrap_key="model")


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Write a tiny random-weight SAM 2 checkpoint (model type tiny_test).")
    p.add_argument("path", nargs="?", default=TINY_TEST_FILE, help=f"output .pt file (default: {TINY_TEST_FILE})")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = make_tiny_sam2_checkpoint(args.path, seed=args.seed)
    hint = "" if out.name == TINY_TEST_FILE else " --provider-model-type tiny_test"
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB); use --provider sam2 --provider-checkpoint {out}{hint}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main())
