#!/usr/bin/env python
"""Draw docs/img/prior_encodings.png: an image, its masks, and each prior encoding.

python docs/make_prior_figure.py            # uses SLIC masks (no weights needed)
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def main() -> None:
    from skimage import data

    from spt_adapter.data.images import imresize_bicubic
    from spt_adapter.prior import ClassicalMaskProvider, encode_masks

    img = imresize_bicubic(data.astronaut(), scale=0.375)  # 192 x 192
    masks = ClassicalMaskProvider("felzenszwalb", scale=300, min_size=200).generate(img)
    rng = np.random.default_rng(0)
    colour = np.zeros_like(img)
    for i in masks.rank():  # largest region first (LabelMasks: one label image)
        colour[masks.region(i)] = rng.integers(40, 256, 3)
    label = encode_masks(masks, "label")[0]
    onehot = encode_masks(masks, "onehot:3")
    boundary = encode_masks(masks, "boundary")[0]
    grey = lambda a: np.repeat((a * 255).round().astype(np.uint8)[..., None], 3, axis=2)  # noqa: E731
    panels = [
        ("image", img),
        (f"masks ({len(masks)})", colour),
        ("label (1 ch)", grey(label)),
        ("onehot:3 (as RGB)", (onehot.transpose(1, 2, 0) * 255).astype(np.uint8)),
        ("boundary (1 ch)", grey(boundary)),
    ]
    h, w = img.shape[:2]
    pad, top = 8, 22
    canvas = Image.new("RGB", (len(panels) * (w + pad) + pad, h + top + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (title, arr) in enumerate(panels):
        x = pad + i * (w + pad)
        canvas.paste(Image.fromarray(arr), (x, top))
        draw.text((x, 5), title, fill="black")
    out = Path(__file__).resolve().parent / "img" / "prior_encodings.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
