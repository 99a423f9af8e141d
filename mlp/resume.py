"""Where a run starts: afresh (its run id recorded), or from its checkpoint, keeping the settings it was made
with; a resume may only extend its epochs or change its time budget."""
from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from mlp import checkpoint, plots, records
from mlp.loop import Trainer
from mlp.nets import Config, config_from
from mlp.recipe import Recipe, override
from mlp.runconfig import KEPT_ON_RESUME, RunConfig
from mlp.rundirs import refuse_a_used_directory

RESET_ON_RESUME = ("max_seconds",)  # a resume may give a new training-time budget (it counts the whole run)


def resume_state(out: Path, name: str = "last.pt") -> dict:
    """The checkpoint to continue from, checked to belong to the run in `out`. A damaged file is one error
    naming it and the next good state (best.pt, or a fresh start)."""
    try:
        state = checkpoint.load(out / name)
        owner = json.loads((out / "run.json").read_text())["run_id"] if (out / "run.json").exists() else None
        if owner is not None and state.get("run_id") != owner:
            raise checkpoint.CheckpointError(
                f"{out / name} belongs to another run (run id {state.get('run_id')}, preset {state.get('preset')}), "
                f"not to the run in {out} (run id {owner})")
        return state
    except checkpoint.CheckpointError as e:
        offer = "start afresh with another output directory"
        if name != "best.pt" and (out / "best.pt").exists():
            try:
                best = checkpoint.load(out / "best.pt")
                offer = (f"best.pt (epoch {best['epoch']}, validation {best['best_val_acc']:.4f}) is intact: continue "
                         f"from it with `python train.py --resume {out} --from best.pt`, or {offer}")
            except checkpoint.CheckpointError:
                pass
        raise checkpoint.CheckpointError(f"{e}. Next good state: {offer}.") from None


def resumable(out: Path, name: str = "last.pt", **overrides) -> tuple[Config, Recipe, dict]:
    """The model, recipe and settings (`KEPT_ON_RESUME`) of the run in `out`, read from its checkpoint, with
    `overrides` of model or recipe fields on top (None: the run's own): what `train.py --resume` and the
    notebook's `resume = True` continue with (`run` refuses what a resume may not change)."""
    state = resume_state(out, name)
    model, recipe = override(config_from(state["model"]), Recipe(**state["recipe"]), **overrides)
    return model, recipe, {k: state.get(k) for k in KEPT_ON_RESUME}


def resumed_settings(state: dict, model, recipe, given: dict, precision: str) -> tuple:
    """What a resumed run trains with: its checkpoint's settings. A resume may only raise the number of epochs
    (an extension, kept in the record); any other setting asked for that differs from the run's is refused,
    named, instead of being ignored."""
    saved = Recipe(**state["recipe"]).to_dict()  # (a field newer than the run: its default, what the run did)
    wanted = recipe.to_dict() if recipe is not None else saved
    differ = [f"{k}={wanted[k]!r} (the run has {saved[k]!r})" for k in saved if k != "epochs" and wanted[k] != saved[k]]
    if model is not None:
        differ += [f"{k}={v!r} (the run has {state['model'][k]!r})" for k, v in model.to_dict().items()
                   if v != state["model"][k]]
    differ += [f"{k}={v!r} (the run has {state.get(k)!r})" for k, v in given.items()
               if k in KEPT_ON_RESUME and k not in RESET_ON_RESUME and v != state.get(k)]
    if precision != "auto" and precision != state["precision"]:
        differ.append(f"precision={precision!r} (the run has {state['precision']!r})")
    if differ:
        raise checkpoint.CheckpointError(
            "a resumed run keeps its own settings; only its number of epochs may grow and its time budget change. "
            "This resume asks for " + "; ".join(differ)
            + ". Start a new run with another output directory to change them")
    done = state["epoch"]
    if wanted["epochs"] < saved["epochs"]:  # a shorter schedule would cut the cosine the run trained on
        raise checkpoint.CheckpointError(f"epochs={wanted['epochs']}: the run was made for {saved['epochs']} epochs "
                                         f"({done} done); a resume can keep or raise its number of epochs, not cut "
                                         f"it. Start a new run for a shorter schedule")
    extended = list(state.get("extended", []))
    if wanted["epochs"] != saved["epochs"]:
        extended.append(dict(at_epoch=done, epochs_from=saved["epochs"], epochs_to=wanted["epochs"]))
    if "max_seconds" in given and given["max_seconds"] != state.get("max_seconds"):
        extended.append(dict(at_epoch=done, max_seconds_from=state.get("max_seconds"),
                             max_seconds_to=given["max_seconds"]))
    return config_from(state["model"]), Recipe(**wanted), extended


@dataclass
class Start:
    """Where a run starts: fresh, or from its checkpoint (`state`) with the settings it was made with."""
    model: Config
    recipe: Recipe
    cfg: RunConfig
    run_id: str
    state: dict | None = None
    extended: list = field(default_factory=list)


def start(model, recipe, cfg: RunConfig, out: Path | None, writer: bool) -> Start:
    """A resume takes its checkpoint's model, recipe, settings and precision (refusing others, `resumed_settings`);
    a fresh run refuses a directory that holds another run's files, and records its run id."""
    if cfg.resume:
        state = resume_state(out, cfg.resume_from)
        model, recipe, extended = resumed_settings(state, model, recipe, cfg.kept(), cfg.precision)
        kept = {k: state.get(k) for k in KEPT_ON_RESUME}  # (runs older than a setting lack it: None)
        kept["test_curve"] = bool(kept["test_curve"])
        kept["max_seconds"] = cfg.max_seconds  # the budget this resume was given (train.py: the run's unless told)
        cfg = dataclasses.replace(cfg, **kept, precision=state["precision"])  # it continues in its own precision
        return Start(model, recipe, cfg, state["run_id"], state, extended)
    run_id = uuid.uuid4().hex[:12]
    if writer:
        refuse_a_used_directory(out)
        records.atomic_write(out / "run.json", json.dumps(dict(run_id=run_id, preset=cfg.preset, seed=cfg.seed)))
    return Start(model, recipe, cfg, run_id)


def continue_from(trainer: Trainer, state: dict, out: Path, animator):
    """Load a checkpoint into the trainer, with best.pt's weights as the best so far, and redraw its curves."""
    best = resume_state(out, "best.pt") if (out / "best.pt").exists() else None
    trainer.load_state_dict(state, checkpoint.evaluated_weights(best) if best else None)
    if animator:
        plots.draw_history(animator, trainer.history)
