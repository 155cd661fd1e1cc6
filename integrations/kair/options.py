"""KAIR options: JSON with ``//`` comments, read exactly as KAIR's ``utils_option.parse`` reads it
(everything after ``//`` on a line is dropped), so a file means the same to both."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from typing import Any

from spt_adapter.errors import ConfigError

from .._options import SPTOptions, parse_spt_block


def strip_comments(text: str) -> str:
    return "".join(line.split("//")[0] + "\n" for line in text.splitlines())


def read_options(path: str | os.PathLike) -> OrderedDict[str, Any]:
    """The options dict of a KAIR JSON file (``//`` comments removed, key order kept)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read KAIR options {path}: {exc}") from None
    try:
        return json.loads(strip_comments(text), object_pairs_hook=OrderedDict)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"KAIR options {path} are not valid JSON after removing // comments: {exc}") from None


def check_gpu_ids(opt: dict) -> None:
    """KAIR's ``parse`` iterates ``gpu_ids`` (it exports ``CUDA_VISIBLE_DEVICES``): it must be a
    list; ``[]`` trains on the CPU. Checked before KAIR reads the file, without touching CUDA (so
    that KAIR's ``CUDA_VISIBLE_DEVICES`` still takes effect)."""
    gpu_ids = opt.get("gpu_ids")
    if not isinstance(gpu_ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in gpu_ids):
        raise ConfigError(
            f'KAIR options need "gpu_ids" as a list of GPU numbers, got {gpu_ids!r}: '
            "e.g. [0] for GPU 0, or [] to train on the CPU"
        )


def spt_options(opt: dict) -> SPTOptions:
    """The parsed ``"spt"`` block of a KAIR options dict; KAIR needs ``spt.backbone`` because
    ``main_train_psnr.py`` replaces ``path.pretrained_netG`` by the last checkpoint it finds."""
    options = parse_spt_block(opt.get("spt"), "spt")
    if not options.backbone:
        raise ConfigError('the KAIR "spt" block needs "backbone": the pretrained network file (e.g. model_zoo/...pth)')
    return options
