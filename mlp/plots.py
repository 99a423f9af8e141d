"""Live figures: `Animator` (d2l's, drawn in place in Jupyter) and the training curves of a run."""
from __future__ import annotations

import io

from mlp.records import atomic_write


def _in_jupyter() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


class Animator:
    """Plots data as it arrives, redrawing one figure in place in Jupyter (a display handle), with the log
    lines (`log`) in one text output under it.

    The d2l constructor, plus `axes_of`: for each series (legend entry), the subplot it is drawn on, and
    `ylabel` may be one label per subplot; `zoom_from`: each subplot's y range fits the points at x >= it (all
    points until there are such), so the first epoch's fall does not flatten the rest. Every point has a
    marker, so a series of one point is visible. Outside Jupyter nothing is shown (nor drawn, until saved) and
    `log` prints; `save(path)` writes a PNG."""

    def __init__(self, xlabel=None, ylabel=None, legend=None, xlim=None, ylim=None, xscale="linear",
                 yscale="linear", fmts=("-", "m--", "g-.", "r:"), nrows=1, ncols=1, figsize=(3.5, 2.5),
                 axes_of=None, zoom_from=None):
        from matplotlib.figure import Figure  # not pyplot: no stray auto-displayed figures
        self.fig = Figure(figsize=figsize)  # laid out once, below: not again on every live redraw
        axes = self.fig.subplots(nrows, ncols, squeeze=False).flatten()
        self.axes, self.legend, self.fmts = list(axes), list(legend or []), fmts
        self.axes_of = list(axes_of) if axes_of is not None else None
        self.zoom_from = zoom_from
        if xlim is not None and xlim[0] == xlim[1]:  # a 1-epoch run: a singular range would only warn
            xlim = [xlim[0] - 0.5, xlim[1] + 0.5]
        ylabels = ylabel if isinstance(ylabel, (list, tuple)) else [ylabel] * len(axes)
        self.style = [dict(xlabel=xlabel, ylabel=yl, xlim=xlim, ylim=ylim, xscale=xscale, yscale=yscale)
                      for yl in ylabels]
        for ax, style in zip(self.axes, self.style):
            ax.set(**{k: v for k, v in style.items() if v is not None})
        self.fig.tight_layout()
        self.X, self.Y, self.lines, self.handle, self.text, self.stale = None, None, [], None, None, False

    def add(self, x, y):
        if not hasattr(y, "__len__"):
            y = [y]
        n = len(y)
        if not hasattr(x, "__len__"):
            x = [x] * n
        if self.X is None:  # one list per series: as many as given, or as the legend names
            n = max(n, len(self.legend))
            self.X, self.Y = [[] for _ in range(n)], [[] for _ in range(n)]
        for i, (a, b) in enumerate(zip(x, y)):
            if a is not None and b is not None:
                self.X[i].append(a)
                self.Y[i].append(b)
        if _in_jupyter():
            self.draw()
        else:  # nobody is watching: drawn once, when saved
            self.stale = True

    def log(self, line: str):
        """One line of the run's log: under the figure in Jupyter (one output, updated), printed elsewhere."""
        self.lines.append(line)
        if not _in_jupyter():
            print(line, flush=True)
            return
        self._show()
        self.text.update({"text/plain": "\n".join(self.lines)}, raw=True)

    def draw(self):
        self.stale = False
        for ax, style in zip(self.axes, self.style):
            ax.cla()
            ax.set(**{k: v for k, v in style.items() if v is not None})
            ax.grid(True, alpha=0.3)
        for i, (xs, ys) in enumerate(zip(self.X or [], self.Y or [])):
            ax = self.axes[self.axes_of[i] if self.axes_of else 0]
            label = self.legend[i] if i < len(self.legend) else None
            ax.plot(xs, ys, self.fmts[i % len(self.fmts)], marker="o", markersize=3 if len(xs) > 3 else 6,
                    label=label)  # (a series of a few points, e.g. validated epochs only: larger markers)
        for j, ax in enumerate(self.axes):
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
            self._zoom(j, ax)
        if _in_jupyter():
            self._show()

    def _zoom(self, j: int, ax):
        if self.zoom_from is None or self.style[j]["ylim"] is not None:
            return
        ys = [y for i, (xs, series) in enumerate(zip(self.X or [], self.Y or []))
              if (self.axes_of[i] if self.axes_of else 0) == j for x, y in zip(xs, series) if x >= self.zoom_from]
        if ys:
            lo, hi = min(ys), max(ys)
            pad = max(0.08 * (hi - lo), 0.002)
            ax.set_ylim(lo - pad, hi + pad)

    def _show(self):
        from IPython.display import Image, display
        img = Image(data=self.png())
        if self.handle is None:  # the figure first, the log under it: two outputs, each updated in place
            self.handle = display(img, display_id=True)
            self.text = display({"text/plain": ""}, raw=True, display_id=True)
        else:
            self.handle.update(img)

    def png(self) -> bytes:
        if self.stale:
            self.draw()
        buf = io.BytesIO()
        self.fig.savefig(buf, format="png", dpi=100)
        return buf.getvalue()

    def save(self, path):
        atomic_write(path, self.png())


def training_animator(epochs, views: int = 1):
    """Loss on the left, accuracy on the right; x in epochs. Training loss and accuracy ~5 times an epoch (each
    the mean of the last ~1/5 epoch of steps), validation accuracy of one view per image after every epoch, and
    where the model is evaluated on several views, the validation accuracy of those (what selects the epoch) at
    the validated epochs. The y ranges fit what happens after the first epoch."""
    legend = ["train loss", "train acc", "val acc (1 view)"] + ([f"val acc ({views} views)"] if views > 1 else [])
    return Animator(xlabel="epoch", ylabel=["loss", "accuracy"], legend=legend, xlim=[0, epochs * 1.04], ncols=2,
                    figsize=(8, 3), axes_of=[0, 1, 1, 1][:len(legend)], zoom_from=1.0)


def validation_points(r: dict) -> tuple:
    """An epoch record's validation points: one view (every epoch), then its views (validated epochs only)."""
    one = r.get("val_acc_1view", r["val_acc"])  # (records older than per-epoch single views: the one number)
    return one, r["val_acc"]


def draw_history(animator: Animator, history):
    """Redraw a run's history (resume, save_run): the training points and the validation points of every epoch."""
    n = len(animator.legend)
    if animator.X is None:
        animator.X, animator.Y = [[] for _ in range(n)], [[] for _ in range(n)]
    for r in history:
        for x, loss, acc in r.get("points") or [(r["epoch"], r["train_loss"], r["train_acc"])]:
            for i, v in ((0, loss), (1, acc)):
                animator.X[i].append(x)
                animator.Y[i].append(v)
        for i, v in zip(range(2, n), validation_points(r)):
            if v is not None:  # None: an epoch not validated (Recipe.validates)
                animator.X[i].append(r["epoch"])
                animator.Y[i].append(v)
    animator.draw()
