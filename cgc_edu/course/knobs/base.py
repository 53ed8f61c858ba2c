"""What every knob widget shares: controls over one figure redrawn as PNG (`Knobs`), one
thread for tiny tensor work, and the few Adam steps that train a widget's toy problem.
"""
from __future__ import annotations

import contextlib
import copy
import html
import io
from typing import Callable, Iterable, Sequence

import ipywidgets as widgets
import torch
from matplotlib.figure import Figure


@contextlib.contextmanager
def one_thread():
    """Run tiny tensor work on one thread: on a busy laptop, threads only wait for each other.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def render_png(fig: Figure, image: widgets.Image, dpi: int) -> bytes:
    """Draw ``fig`` into ``image`` as PNG at its own pixel width (shrunk only to fit).
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    png = buffer.getvalue()
    image.width = str(int.from_bytes(png[16:20], "big"))
    image.value = png
    return png


def adam_steps(parameters: Iterable[torch.Tensor], loss: Callable[[], torch.Tensor],
               steps: int, lr: float) -> list[float]:
    """``steps`` plain Adam steps (constant rate ``lr``) on ``loss()``, on one thread;
    returns the loss before each step.

    The knobs' toy problems (a regression through one layer, tokens through a MoE layer)
    are tensors in, tensors out: `cgc_edu.train.train`, which tunes a causal language
    model's adapters on prompt / target rows with a decaying AdamW rate, cannot train them.
    """
    opt = torch.optim.Adam(list(parameters), lr=lr)
    losses = []
    with one_thread():
        for _ in range(steps):
            value = loss()
            losses.append(value.item())
            opt.zero_grad()
            value.backward()
            opt.step()
    return losses


class Knobs(widgets.VBox):
    """Controls over one figure: subclasses give `_compute() -> state` and `_draw(fig, state)`.

    Code and tests drive a widget by setting its controls' ``.value`` and read what it
    shows from ``.state``; every move recomputes the state, redraws the figure and shows
    it as PNG bytes (so the static book keeps the last picture).
    """

    dpi = 90

    def _build(self, rows: Sequence[Sequence[widgets.Widget]], figsize) -> None:
        self.figure = Figure(figsize=figsize, layout="constrained")
        self.image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self.message = widgets.HTML()
        self._state: dict = {}
        self._holding = False
        for row in rows:
            for control in row:
                control.observe(lambda _change: self._redraw(), names="value")
        super().__init__([widgets.HBox(list(row)) for row in rows] + [self.message, self.image])
        self._redraw()

    @property
    def state(self) -> dict:
        """What the widget shows now (a copy: edit it freely).

        Taught in: notebooks/01_lora_from_scratch.ipynb.
        """
        return copy.deepcopy(self._state)

    def _redraw(self) -> None:
        if self._holding:
            return
        with one_thread():
            self._state = self._compute()
        self.figure.clear()
        self._draw(self.figure, self._state)
        render_png(self.figure, self.image, self.dpi)
        self.message.value = html.escape(self._state.get("summary", ""))

    def _compute(self) -> dict:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def _draw(self, fig: Figure, state: dict) -> None:  # pragma: no cover
        raise NotImplementedError
