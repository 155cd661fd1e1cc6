"""What ``benchmarks/quality.py`` prints and writes: per-seed means and spreads, the ladder tables with
the paired differences under them, and the JSON of every number."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ladder import DIFFS, ROW_TITLES  # noqa: E402


def stats(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def fmt(values: list[float]) -> str:
    m, s = stats(values)
    return f"{m:.3f} ± {s:.3f}" if len(values) > 1 else f"{m:.3f}"


def row_titles(args) -> dict[str, str]:
    titles = dict(ROW_TITLES)
    if getattr(args, "segment_input", "lq") == "restored":
        titles["b"] = "(b) + SPT, segments of the backbone's restoration of LQ"
    if getattr(args, "student_input", "lq") == "restored":
        titles["g"] = "(g) + SPT, distilled prior (student reads [LQ, frozen backbone(LQ)])"
        titles["h"] = "(h) + SPT, same student on [LQ, frozen backbone(LQ)], no teacher (control)"
    return titles


def render(
    res: dict[str, Any], eval_names: list[str], rows: list[str], fusions: list[str], titles: dict[str, str] = ROW_TITLES
) -> str:
    lines = []
    for name in eval_names:
        lines.append(f"\n#### {name}: PSNR (dB), mean ± std over seeds\n")
        lines.append("| row | " + " | ".join(fusions) + " |")
        lines.append("| --- |" + " --- |" * len(fusions))
        for row in rows:
            if row not in res:
                continue
            if row in ("a", "e"):
                cell = fmt(res[row]["-"][name])
                lines.append(f"| {titles[row]} | " + " | ".join([cell] * len(fusions)) + " |")
            else:
                lines.append(f"| {titles[row]} | " + " | ".join(fmt(res[row][f][name]) for f in fusions) + " |")
        for row, ref in DIFFS:
            if row not in res or ref not in res:
                continue
            cells = []
            for f in fusions:
                x, c = res[row][f][name], res[ref][f][name]
                diff = [xi - ci for xi, ci in zip(x, c, strict=True)]
                m, s = stats(diff)
                sep = "yes" if min(x) > max(c) else ("below" if max(x) < min(c) else "no")
                ok = ""
                if m >= 0.05 and sep == "yes":  # the oracle reads the clean image: a ceiling, not a result
                    ok = "**meets target**" if row != "d" else "(oracle above 0.05: not deployable)"
                cells.append(f"{m:+.3f} ± {s:.3f} (separate: {sep}) {ok}".strip())
            lines.append(f"| {row} − {ref} (paired per seed) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _report(args, argv, t_all, title, bb_info, res, eval_names, rows, extra, per_image=None) -> None:
    """Print the ladder's tables and write ``--json``: the command, the per-seed means (``results``),
    the per-image PSNRs of :func:`_ladder.run_ladder` (``per_image``), the settings and ``extra``."""
    wall = time.time() - t_all
    cmd = "python benchmarks/quality.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"\n### {title}\n")
    print(f"command: `{cmd.strip()}`  ")
    print(
        f"machine: {platform.machine()} {os.cpu_count()} CPU(s), torch {torch.__version__}, "
        f"{args.threads} threads; wall time {wall / 60:.1f} min (backbone "
        f"{'from cache' if bb_info['cached'] else 'pre-trained in this run'})"
    )
    print(render(res, eval_names, rows, args.fusions, row_titles(args)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "command": cmd,
            "task": args.task,
            "wall_seconds": wall,
            "backbone": bb_info,
            "results": res,
            **({"per_image": per_image} if per_image is not None else {}),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            **extra,
        }
        args.json.write_text(json.dumps(payload, indent=1, sort_keys=True))
