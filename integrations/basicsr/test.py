"""Test an SPT adapter with BasicSR's own test pipeline (``basicsr/test.py``).

    python -m spt_adapter.integrations.basicsr.test -opt options/test_spt_swinir.yml

The options are BasicSR's test options with ``model_type: SPTSRModel``, the backbone in
``path.pretrain_network_g`` and the adapter in ``spt.adapter`` (a delta the training wrote, e.g.
``experiments/<name>/models/net_g_latest.safetensors``). Test datasets are ``SPTPairedImageDataset``
with ``spt_prior`` for a provider prior, or any paired dataset for a distilled prior (the adapter's
student makes the prior). The launcher registers the SPT classes (hook
``spt_adapter_register_framework``) and calls ``basicsr.test.test_pipeline`` unchanged: BasicSR
writes its PSNR/SSIM log and, with ``val.save_img``, the images under ``results/<name>/``.
"""

from __future__ import annotations

import os
import sys
from os import path as osp

from spt_adapter.errors import ConfigError

from .._launch import run_reporting_errors
from .train import register


def test(root_path: str | None = None) -> None:
    """Register the SPT classes and run ``basicsr.test.test_pipeline(root_path)`` (sys.argv holds
    BasicSR's arguments)."""
    register()
    import basicsr.test as basicsr_test

    basicsr_test.test_pipeline(osp.abspath(root_path or os.getcwd()))


def check_test_options(path: str) -> None:
    """What test.py would otherwise find late or never, or report as a raw traceback: a YAML file that is
    missing, a folder, not YAML or not a mapping; an ``spt`` block or ``datasets`` that are not mappings;
    no test dataset; an SPT model without an adapter (it would test the identity units, the frozen
    backbone, and say nothing)."""
    import yaml

    where = f"-opt {path}"
    if not osp.exists(path):
        raise ConfigError(
            f"{where}: no such file (pass BasicSR's test options YAML, e.g. examples/basicsr/test_spt_swinir_x2.yml)"
        )
    if not osp.isfile(path):
        raise ConfigError(f"{where} is a folder, not a YAML file: pass the options file itself")
    try:
        with open(path, encoding="utf-8") as fh:
            opt = yaml.safe_load(fh)
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not a text (YAML) file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{where} is not valid YAML{at}: {problem}") from None
    if not isinstance(opt, dict):
        raise ConfigError(
            f"{where} must hold a mapping of options (name:, model_type:, datasets:, ...), "
            f"got {type(opt).__name__ if opt is not None else 'an empty file'}"
        )
    if "spt" in opt and opt["spt"] is not None and not isinstance(opt["spt"], dict):
        raise ConfigError(
            f"{where}: 'spt' must be a mapping (adapter:, ...), got {type(opt['spt']).__name__} {opt['spt']!r}"
        )
    datasets = opt.get("datasets")
    if not isinstance(datasets, dict) or not datasets:
        raise ConfigError(f"{where}: no test dataset: add a 'datasets:' mapping with at least one test_<n>: entry")
    bad = [k for k, v in datasets.items() if not isinstance(v, dict)]
    if bad:
        raise ConfigError(f"{where}: datasets.{bad[0]} must be a mapping (name:, type:, dataroot_gt:, ...)")
    if opt.get("model_type") == "SPTSRModel" and not (opt.get("spt") or {}).get("adapter"):
        raise ConfigError(
            f"{path}: testing SPTSRModel needs spt.adapter (the delta to test, e.g. "
            "experiments/<name>/models/net_g_latest.safetensors)"
        )


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]

    def run() -> None:
        if "-opt" in sys.argv[1:-1]:
            check_test_options(sys.argv[sys.argv.index("-opt") + 1])
        test()

    return run_reporting_errors(run)


if __name__ == "__main__":
    sys.exit(main())
