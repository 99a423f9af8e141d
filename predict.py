"""Classify your own images with a trained model.

    python predict.py --checkpoint runs/X/model.pt photo1.png photo2.jpg
    python predict.py --checkpoint runs/X/model.pt --json *.png

Any size, colour or grayscale, PNG or JPEG. Each image is made to look like Fashion-MNIST: grayscale, a light
object on a dark background (a light background is detected from the border and inverted), scaled to fit
28x28 keeping its aspect ratio, padded with background. A file that cannot be read gets an error line; the
others still get answers (the exit code is then 1).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

import my_utils as mu
from model import IMAGE_SIZE, Config, MLPNet
from train import load_checkpoint


def load_model(path) -> MLPNet:
    """A `model.pt` written by train.py / the notebook (config + weights), loaded with weights_only=True."""
    ckpt = load_checkpoint(path)  # clear errors for a missing or truncated file
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path} is not a model.pt written by this repo (it has no config and state_dict)")
    net = MLPNet(Config(**ckpt["config"]))
    net.load_state_dict(ckpt["state_dict"])
    return net.eval()


def load_image(path) -> tuple[torch.Tensor, bool]:
    """-> (float32 [1,28,28] in [0,1], whether it was inverted). Raises ValueError for unreadable files."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("L")
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"not a readable PNG/JPEG image ({type(e).__name__}: {e})") from e
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
    for p in paths:
        try:
            x, inverted = load_image(p)
        except ValueError as e:
            results.append(dict(file=str(p), error=str(e)))
            continue
        probs = torch.softmax(net.eval()(x.unsqueeze(0).to(mu.model_device(net))), dim=1)[0].cpu()
        values, idx = probs.topk(top)
        results.append(dict(file=str(p), inverted=inverted,
                            top=[dict(label=mu.LABELS[int(i)], prob=float(v)) for v, i in zip(values, idx)]))
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a model.pt from a run directory")
    p.add_argument("--json", action="store_true", help="print one JSON list instead of text")
    p.add_argument("--top", type=int, default=3)
    p.add_argument("images", nargs="+")
    args = p.parse_args(argv)
    try:
        net = load_model(args.checkpoint)
    except (OSError, ValueError, RuntimeError) as e:
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
