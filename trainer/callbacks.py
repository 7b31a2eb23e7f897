"""The training loop's seam for whatever watches a run: the trackers of ``trainer.tracking``, or a
logger of one's own passed to ``trainer.train.run(cfg, callbacks=[...])``.

The loop calls ``on_start`` once, with the config and the step it starts from (above 0 when it
resumed from a checkpoint); ``on_log`` at each log interval with the train metrics; ``on_eval``
after each evaluation; ``on_end`` however the run ends, with its Result, or None when a stop
signal or an error ended it. Metrics are named like TensorBoard tags: ``train/loss``,
``train/lr_factor`` (eta_t / eta_base), ``train/tokens_per_s``, ``val/loss``.
"""
from __future__ import annotations

import sys
from typing import Any, Iterable, Optional


class Callback:
    """Override the hooks you need; the others do nothing."""

    def on_start(self, config: dict, step: int) -> None:
        pass

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def on_end(self, result: Optional[Any]) -> None:
        pass


class Callbacks(Callback):
    """Calls each callback in turn. Watching never stops training (the record, not a dashboard, is
    the source of truth): a callback that raises is reported once on stderr and not called again."""

    def __init__(self, callbacks: Iterable[Callback]) -> None:
        self.active = list(callbacks)

    def _each(self, hook: str, *args: Any) -> None:
        for callback in list(self.active):
            try:
                getattr(callback, hook)(*args)
            except Exception as err:  # disk full, network lost, a bug in someone's logger
                self.active.remove(callback)
                reason = (str(err).splitlines() or [""])[0]
                print(f"warning: {type(callback).__name__}.{hook} failed ({type(err).__name__}: "
                      f"{reason}); training goes on without it", file=sys.stderr, flush=True)

    def on_start(self, config: dict, step: int) -> None:
        self._each("on_start", config, step)

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self._each("on_log", step, metrics)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self._each("on_eval", step, metrics)

    def on_end(self, result: Optional[Any]) -> None:
        self._each("on_end", result)
