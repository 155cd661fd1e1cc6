"""Issue 19: bad input and faults, round 3. Each test is one numbered case of the issue (the number is
in its name). Real architectures (spandrel SwinIR), real files on disk, the real CLI in-process."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import spt_adapter
from spt_adapter.cli import main
from spt_adapter.errors import RestoreError

pytest.importorskip("spandrel")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(1 / mse) if mse > 0 else math.inf


# ---------------------------------------------------------------------------------------------
# A1 / C15. tiles on a windowed backbone, image sizes that are not window multiples
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("h,w,tile", [(61, 77, 48), (45, 93, 44)])
def test_a1_swinir_tiled_equals_whole_on_sizes_that_are_not_window_multiples(h, w, tile):
    """Before: border tiles ended at the image edge unpadded while the whole image was reflect-padded to
    the window, so the last rows/columns differed (17 dB in the border strip, 25 dB overall)."""
    from test_restore import photo, swinir

    from spt_adapter.training import restore as R

    model = swinir()  # x2, window 8, attention weights at PyTorch's default scale
    assert h % R.window_size(model) and w % R.window_size(model)
    img = photo(h, w).astype(np.float32) / 255
    whole = spt_adapter.restore(model, img)
    tiled = spt_adapter.restore(model, img, tile=tile)
    assert tiled.shape == whole.shape == (2 * h, 2 * w, 3)
    # the same tolerance as test_restore's window-multiple case, over the image and its border strips
    for a, b in ((whole, tiled), (whole[-10:], tiled[-10:]), (whole[:, -10:], tiled[:, -10:])):
        assert _psnr(a, b) >= 45


def test_c15_an_overlap_leaving_a_stride_of_one_is_refused_before_any_tile_runs(tmp_path, capsys):
    from test_restore import photo, swinir

    with pytest.raises(RestoreError, match="advances 1 pixel"):
        spt_adapter.restore(swinir(), photo(40, 40), tile=33, tile_overlap=32)
    with pytest.raises(RestoreError, match="whole number"):
        spt_adapter.restore(swinir(), photo(40, 40), tile=40.5)
    with pytest.raises(RestoreError, match="needs a model"):
        spt_adapter.restore(None, photo(40, 40))
