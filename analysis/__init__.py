"""The analysis stage: a result store -> tables, optimal learning rates, verdicts and figures.

Reads the store through sweeper.store (its Store and record schema) only; never imports torch or the trainer's model code
(trainer.coord_verdict, which judges a coordinate check, needs numpy only).
"""


class AnalysisError(Exception):
    """Bad input to the analysis: the message is the whole story, shown without a traceback."""
