"""Classify your own images with a trained model (by default the one shipped in results/model/).

    python predict.py photo1.png photo2.jpg                        # the shipped `quick` model
    python predict.py --checkpoint runs/X/model.pt --json *.png    # a model of your own

Any size up to 40 megapixels, colour or grayscale, 8- or 16-bit, PNG, JPEG, GIF (first frame), BMP, TIFF or
WebP; no other decoder runs (Pillow would otherwise pick one by content: an EPS file named .png would run
Ghostscript). A file that cannot be read gets one error line; the others still get answers (the exit code is
then 1).

Each image is framed the way Fashion-MNIST's own images were made (trim to the object, longer side to 28
pixels, centred, light object on black), in these steps:
  1. transparency is composited onto a background: the opaque part of the border where there is one, else
     white behind a dark object and black behind a light one;
  2. grayscale (16-bit images scaled to their own range);
  3. the background is the median of the border pixels; a light one is inverted (negative image);
  4. the object is what differs from the background by more than the border's own noise; the image is
     cropped to the object's bounding box, its longer side scaled to 28 pixels (Lanczos), and centred on a
     28x28 background (an odd pixel left over goes above and left, as in the dataset);
  5. the levels are stretched so that the background is black and white stays white.
An image that already is in the dataset's form (28x28, grayscale, no transparency, dark background) is used
as it is. Fashion-MNIST's pipeline also sharpened after resizing; this does not.
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
SHIPPED_MODEL = Path(__file__).resolve().parent / "results" / "model" / "model.pt"  # docs/model_card.md
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


def open_image(path) -> Image.Image:
    """Decode the first frame of an allowed format, bounded in pixels. Raises ValueError with one line of reason."""
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
                im = ImageOps.exif_transpose(im)
                alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
                if alpha:
                    im = im.convert("RGBA")
                return im if alpha else to_gray8(im)  # (decoded here, inside the checks)
    except ValueError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"more than the {MAX_PIXELS // 1_000_000} megapixels predict.py decodes, a decompression "
                         f"bomb? (Pillow: {e})") from None
    except Image.UnidentifiedImageError:
        raise ValueError("not a readable image of the formats read here (PNG, JPEG, GIF, BMP, TIFF, WebP)") from None
    except DECODE_ERRORS as e:
        raise ValueError(f"not a readable image ({type(e).__name__}: {e})") from None


def border(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x[0], x[-1], x[1:-1, 0], x[1:-1, -1]])


def flatten_alpha(im: Image.Image) -> np.ndarray:
    """RGBA -> float grayscale, composited onto the opaque border's median, or where the border is transparent,
    onto white behind a dark object and black behind a light one (step 1)."""
    gray = np.asarray(to_gray8(im.convert("RGB")), dtype=np.float32)
    a = np.asarray(im.getchannel("A"), dtype=np.float32) / 255
    opaque = border(a) > 0.5
    if opaque.mean() >= 0.5:
        back = float(np.median(border(gray)[opaque]))
    else:
        back = 255.0 if (gray * a).sum() / max(a.sum(), 1e-6) < 128 else 0.0
    return gray * a + back * (1 - a)


def frame(x: np.ndarray) -> tuple[np.ndarray, bool]:
    """Float grayscale [H,W] in 0..255 -> ([28,28] in 0..255, light object on black; whether it was inverted):
    steps 3-5 of the module's docstring."""
    edge = border(x)
    back = float(np.median(edge))
    inverted = back > 127  # Fashion-MNIST is a light object on black
    if inverted:
        x, edge, back = 255 - x, 255 - edge, 255 - back
    noise = 2 * float(np.median(np.abs(edge - back)))  # JPEG ringing, paper texture (robust to an object that
    # touches the border, as the dataset's own do)
    rows, cols = np.nonzero(x - back > noise + 8)
    if len(rows):
        x = x[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    h, w = x.shape
    size = [max(1, round(n * IMAGE_SIZE / max(h, w))) for n in (w, h)]
    y = np.full((IMAGE_SIZE, IMAGE_SIZE), back, dtype=np.float32)
    top, left = (-(-(IMAGE_SIZE - n) // 2) for n in (size[1], size[0]))  # an odd pixel left over goes above and
    y[top:top + size[1], left:left + size[0]] = np.asarray(  # left, as in 98 % of the dataset's own images
        Image.fromarray(x.astype(np.float32), mode="F").resize(size, Image.Resampling.LANCZOS))
    return np.clip((y - back) * 255 / max(255 - back, 1.0), 0, 255), inverted


def load_image(path) -> tuple[torch.Tensor, bool]:
    """-> (float32 [1,28,28] in [0,1], whether it was inverted), framed as the module's docstring says. Raises
    ValueError with one line of reason."""
    im = open_image(path)
    if im.mode == "L" and im.size == (IMAGE_SIZE, IMAGE_SIZE) and np.median(border(np.asarray(im))) <= 127:
        x, inverted = np.asarray(im, dtype=np.float32), False  # already the dataset's form
    else:
        x, inverted = frame(flatten_alpha(im) if im.mode == "RGBA" else np.asarray(im, dtype=np.float32))
    return torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(0) / 255, inverted


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


def shipped_summary() -> str:
    """One line on the shipped model, from the metrics.json beside it."""
    try:
        m = json.loads((SHIPPED_MODEL.parent / "metrics.json").read_text())
        return f"preset {m['preset']}, seed {m['seed']}, test accuracy {100 * m['test_acc']:.2f} %: docs/model_card.md"
    except (OSError, ValueError, KeyError):
        return "its metrics.json is missing"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help=f"a model.pt from a run directory (default: the shipped model, "
                                        f"{SHIPPED_MODEL.relative_to(SHIPPED_MODEL.parents[2])})")
    p.add_argument("--json", action="store_true", help="print one JSON list instead of text")
    p.add_argument("--top", type=int, default=3, help=f"how many classes to list, 1-{NUM_CLASSES}")
    p.add_argument("images", nargs="+")
    args = p.parse_args(argv)
    if not 1 <= args.top <= NUM_CLASSES:
        p.error(f"--top {args.top}: there are {NUM_CLASSES} classes; give 1 to {NUM_CLASSES}")
    checkpoint = args.checkpoint or SHIPPED_MODEL
    try:
        net = load_model(checkpoint)
    except (OSError, CheckpointError, RuntimeError) as e:
        print(f"error: cannot load {checkpoint}: {e}", file=sys.stderr)
        return 1
    if not args.checkpoint:
        print(f"using the shipped model {checkpoint} ({shipped_summary()}); --checkpoint picks another",
              file=sys.stderr)
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
