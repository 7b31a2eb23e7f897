"""The trainer's one typed config: every setting of a cell, filled from Hydra at the edge.

Fields marked ``result=False`` do not change what a run computes (paths, threads, logging);
the sweeper leaves them out of a cell's key.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional


def _runtime(default: Any) -> Any:
    return field(default=default, metadata={"result": False})


@dataclass
class TrainConfig:
    # The sweepable axes. lr is log2 of the base learning rate: lr=-8 means eta_base = 2^-8.
    width: int = 256
    depth: int = 4
    lr: float = -8.0
    param: str = "mup"
    optimizer: str = "muon_kimi"
    layernorm: bool = True
    seed: int = 0

    # Base model of the ratio form r_n = width / base_width, r_L = depth / base_depth (paper 4.3).
    base_width: int = 256
    base_depth: int = 4
    head_dim: int = 64
    init_std: float = 0.02  # sigma_base (D.3.1)
    weight_decay: float = 0.0  # lambda_base: the paper trains without weight decay (5.1)
    adam_eps: float = 1e-16  # eps_base (5.1)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    momentum: float = 0.95  # Muon's Nesterov momentum (5.1); SSO's too
    # Optimizer-specific settings (trainer.parameterization.OPTIMIZER_SETTINGS says whose); their
    # defaults mean "not given": another optimizer refuses them.
    matrix_io: bool = False  # the matrix optimizer also updates the input and output weights (Tables 1-3, 6)
    precondition_frequency: Optional[int] = None  # shampoo, soap: steps between preconditioner updates
    hessian_interval: Optional[int] = None  # sophia: k, steps between Hessian estimates (C.9)
    sophia_rho: Optional[float] = None  # sophia: gamma of C.9's max(gamma h, eps)

    # Data: "embedded" (stdlib sources, bytes), "openwebtext" (GPT-2 BPE), or a folder of text files.
    dataset: str = "embedded"
    tokenizer: str = "auto"  # auto | byte | gpt2
    vocab_size: int = 0  # 0: the tokenizer's padded size; a larger value pads the embedding and output
    data_dir: Optional[str] = _runtime(None)

    # Schedule: linear warmup, cosine decay of eta_base to lr_floor (D.3.1).
    batch_size: int = 16
    seq_len: int = 256
    steps: int = 200
    warmup_steps: int = 20
    lr_floor: float = 3e-5
    grad_clip: float = 1.0
    eval_interval: int = 50
    eval_batches: int = 4
    # A loss above divergence_factor x the first step's loss (or NaN/inf) stops the run as diverged.
    divergence_factor: float = 2.0

    # Runtime: none of these change the result.
    device: str = _runtime("auto")  # auto | cpu | cuda
    precision: str = _runtime("auto")  # auto | fp32 | bf16
    compile: bool = _runtime(False)
    threads: int = _runtime(0)  # torch intra-op threads; 0 leaves torch's default
    run_dir: Optional[str] = _runtime(None)  # checkpoints and result.json; None: no checkpoints
    checkpoint_interval: int = _runtime(100)
    log_interval: int = _runtime(10)

    @classmethod
    def from_mapping(cls, values: dict) -> "TrainConfig":
        """Builds a config from a mapping, rejecting keys that are not settings."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown trainer setting(s) {unknown}; known: {sorted(names)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def eta_base(self) -> float:
        return 2.0 ** self.lr

    def model_vocab(self, tokenizer_vocab: int) -> int:
        """The vocab the model is built with: the tokenizer's, or vocab_size when that pads it."""
        if self.vocab_size and self.vocab_size < tokenizer_vocab:
            raise ValueError(f"vocab_size={self.vocab_size} is below the tokenizer's {tokenizer_vocab}")
        return max(self.vocab_size, tokenizer_vocab)

    def n_head(self) -> int:
        """Heads of head_dim each; widths below head_dim get one head of the full width."""
        head_dim = min(self.head_dim, self.width)
        if self.width % head_dim:
            raise ValueError(
                f"width={self.width} cannot be split into attention heads of {head_dim}: "
                f"use a multiple of {head_dim} (or a width below it)"
            )
        return self.width // head_dim

    def validate(self) -> None:
        """Checks what can be checked without data or a model; raises ValueError with the fix."""
        for name in ("width", "depth", "base_width", "base_depth", "batch_size", "seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if self.steps < 0 or self.warmup_steps < 0:
            raise ValueError("steps and warmup_steps must be >= 0")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision={self.precision!r}: choose auto, fp32 or bf16")
        for name in ("precondition_frequency", "hessian_interval", "sophia_rho"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        if self.tokenizer not in ("auto", "byte", "gpt2"):
            raise ValueError(f"tokenizer={self.tokenizer!r}: choose auto, byte or gpt2")
        self.n_head()


def result_fields() -> list[str]:
    """The settings that change a run's result: a cell's identity."""
    return [f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("result", True)]
