"""Classify your own images with a trained model.

    python predict.py --checkpoint runs/X/model.pt photo1.png photo2.jpg
    python predict.py --checkpoint runs/X/model.pt --json *.png

Any size up to 40 megapixels, colour or grayscale, 8- or 16-bit, PNG, JPEG, GIF (first frame), BMP, TIFF or
WebP; no other decoder runs (Pillow would otherwise pick one by content: an EPS file named .png would run
Ghostscript). Each image is made to look like Fashion-MNIST: grayscale, a light object on a dark
background (a light background is detected from the border and inverted), scaled to fit 28x28 keeping its
aspect ratio, padded with background. A file that cannot be read gets one error line; the others still get
answers (the exit code is then 1).
"""
from __future__ import annotations

import argparse
import json
import struct
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from mlp.checkpoint import CheckpointError, load_model
from mlp.data import LABELS
from mlp.evaluate import Views, logits
from model import IMAGE_SIZE, NUM_CLASSES

# Decoding is bounded by the pixel count a file declares, checked before any pixel is decoded: 40 MP is at
# most 160 MB as RGBA. A PNG that declares 30,000 x 30,000 pixels is refused from its header.
MAX_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow's own check, at our bound: warns above it, refuses above twice it
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")  # the only decoders Image.open may choose
# What a hostile file can raise from inside Pillow (its own fuzzers treat these as expected): one bad file
DECODE_ERRORS = (OSError, SyntaxError, EOFError, NotImplementedError, OverflowError, MemoryError, struct.error)


def to_gray8(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit grayscale; 16/32-bit images are scaled to their own range, not clipped."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        x = torch.from_numpy(np.array(im.convert("F"), dtype=np.float32))
        lo, hi = float(x.min()), float(x.max())
        x = ((x - lo) / (hi - lo) * 255 if hi > lo else torch.zeros_like(x)).round().to(torch.uint8)
        return Image.frombytes("L", (im.width, im.height), x.numpy().tobytes())
    return im.convert("L")


def load_image(path) -> tuple[torch.Tensor, bool]:
    """-> (float32 [1,28,28] in [0,1], whether it was inverted). Raises ValueError with one line of reason."""
    path = Path(path)
    if path.is_dir():
        raise ValueError("is a directory, not an image file")
    if not path.exists():
        raise ValueError("no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=FORMATS) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise ValueError(f"declares {im.width:,} x {im.height:,} pixels, more than the "
                                     f"{MAX_PIXELS // 1_000_000} megapixels predict.py decodes (a decompression bomb?)")
                im.seek(0)  # animated images: the first frame
                im = to_gray8(ImageOps.exif_transpose(im))
    except ValueError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"more than the {MAX_PIXELS // 1_000_000} megapixels predict.py decodes, a decompression "
                         f"bomb? (Pillow: {e})") from None
    except Image.UnidentifiedImageError:
        raise ValueError("not a readable image of the formats read here (PNG, JPEG, GIF, BMP, TIFF, WebP)") from None
    except DECODE_ERRORS as e:
        raise ValueError(f"not a readable image ({type(e).__name__}: {e})") from None
    x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).reshape(im.height, im.width)
    border = torch.cat([x[0], x[-1], x[:, 0], x[:, -1]]).float()
    inverted = bool(border.mean() > 127)  # Fashion-MNIST is a light object on black
    if inverted:
        im = ImageOps.invert(im)
    if im.size != (IMAGE_SIZE, IMAGE_SIZE):
        im = ImageOps.pad(im, (IMAGE_SIZE, IMAGE_SIZE), method=Image.Resampling.LANCZOS, color=0)
    x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).reshape(1, IMAGE_SIZE, IMAGE_SIZE)
    return x.float() / 255, inverted


@torch.no_grad()
def predict_files(net, paths, top=3) -> list[dict]:
    """One dict per file: {file, top: [{label, prob}], inverted} or {file, error}."""
    results = []
    device = next(net.parameters()).device
    for p in paths:
        try:
            x, inverted = load_image(p)
        except ValueError as e:
            results.append(dict(file=str(p), error=str(e)))
            continue
        probs = torch.softmax(logits(net.eval(), x.unsqueeze(0).to(device), Views.of(net.cfg)), dim=1)[0].cpu()
        values, idx = probs.topk(top)
        results.append(dict(file=str(p), inverted=inverted,
                            top=[dict(label=LABELS[int(i)], prob=float(v)) for v, i in zip(values, idx)]))
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a model.pt from a run directory")
    p.add_argument("--json", action="store_true", help="print one JSON list instead of text")
    p.add_argument("--top", type=int, default=3, help=f"how many classes to list, 1-{NUM_CLASSES}")
    p.add_argument("images", nargs="+")
    args = p.parse_args(argv)
    if not 1 <= args.top <= NUM_CLASSES:
        p.error(f"--top {args.top}: there are {NUM_CLASSES} classes; give 1 to {NUM_CLASSES}")
    try:
        net = load_model(args.checkpoint)
    except (OSError, CheckpointError, RuntimeError) as e:
        print(f"error: cannot load {args.checkpoint}: {e}", file=sys.stderr)
        return 1
    results = predict_files(net, args.images, args.top)
    if args.json:
        print(json.dumps(results, indent=2))
    for r in results:
        if "error" in r:
            print(f"error: {r['file']}: {r['error']}", file=sys.stderr)
        elif not args.json:
            ranked = "  ".join(f"{i + 1}. {t['label']} {t['prob']:.3f}" for i, t in enumerate(r["top"]))
            print(f"{r['file']}: {ranked}" + ("  (background inverted)" if r["inverted"] else ""))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
