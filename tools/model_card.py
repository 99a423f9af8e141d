"""Evaluate the shipped model (results/model/model.pt) on the 10,000 test images as its record says (precision,
views) and write results/model/evaluation.json: accuracy, per-class accuracy and the confusion matrix, which
docs/model_card.md renders (`python -m tools.render`).

    python -m tools.model_card
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mlp import data, hardware, records
from mlp.checkpoint import load_model
from mlp.evaluate import Views, confusion_matrix, predict

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "results" / "model"


def evaluate(folder: Path = MODEL) -> dict:
    rec = json.loads((folder / "metrics.json").read_text())
    net = load_model(folder / "model.pt")
    a = data.load_arrays()
    test = data.FastLoader(a["test_x"], a["test_y"], rec["recipe"]["batch_size"])  # the batches the run tested in
    device = torch.device("cpu")
    views = Views.of(net.cfg)
    preds, labels = predict(net, test, device, rec["precision"], views)
    cm = confusion_matrix(preds, labels)
    return dict(test_acc=float((preds == labels).sum()) / len(labels), test_images=len(labels),
                per_class={name: int(cm[i, i]) / int(cm[i].sum()) for i, name in enumerate(data.LABELS)},
                confusion=cm.tolist(), labels=data.LABELS, precision=rec["precision"], eval_views=views.count,
                hardware=hardware.describe(device), torch=torch.__version__, git_commit=records.git_commit(),
                command="python -m tools.model_card", date=time.strftime("%Y-%m-%d"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default=str(MODEL), help="a folder with model.pt and metrics.json")
    args = p.parse_args(argv)
    folder = Path(args.model_dir)
    result = evaluate(folder)
    records.atomic_write(folder / "evaluation.json", json.dumps(result, indent=2))
    print(f"test accuracy {result['test_acc']:.4f} ({result['precision']}, {result['eval_views']} views, "
          f"{result['hardware']}): wrote {folder / 'evaluation.json'}")


if __name__ == "__main__":
    main()
