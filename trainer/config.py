"""The trainer's one typed config: every setting of a cell, filled from Hydra at the edge.

Fields marked ``result=False`` do not change what a run computes (paths, threads, logging);
the sweeper leaves them out of a cell's key.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .rules import check_names
from .tracking import LOGGERS, check_installed


CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # the Hydra configs (trainer's and sweep's)

# Files of a run_dir: the checkpoint a restarted run resumes from, and the finished run's Result.
CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"


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

    # The model (trainer.model_factory): package.module:factory, called as factory(width=, depth=,
    # vocab_size=, seq_len=, **model_args) and returning logits (B, T, vocab). Each parameter's rule
    # follows from its role, inferred from shapes (trainer.roles); model_roles names the role of
    # parameters shape cannot decide ({glob of parameter names: role}); model_branches names the
    # residual branches the block multiplier scales (globs of module names, separated by spaces;
    # empty: the usual names, trainer.hooks).
    model: str = "trainer.model:gpt2"
    # (Any, not Dict: Hydra merges a dict override into a typed dict's default, which struct mode
    # refuses; into None it assigns. None: no arguments, no roles named.)
    model_args: Any = None
    model_roles: Any = None
    model_branches: str = ""

    # Base model of the ratio form r_n = width / base_width, r_L = depth / base_depth (paper 4.3).
    base_width: int = 256
    base_depth: int = 4
    head_dim: int = 64
    # Attention logits' scale: inv_sqrt_d is 1/sqrt(d_head) (GPT-2's); inv_d is 1/d_head, the muP
    # choice of microsoft/mup and of the paper's reference code (nanoGPT-mup, CompleteP), which keeps
    # the logits' scale when d_head grows. With a fixed head_dim the two differ by a constant.
    attention_scale: str = "inv_sqrt_d"
    init_std: float = 0.02  # sigma_base (D.3.1)
    weight_decay: float = 0.0  # lambda_base: the paper trains without weight decay (5.1)
    adam_eps: float = 1e-16  # eps_base (5.1)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    momentum: float = 0.95  # Muon's Nesterov momentum (5.1); SSO's too
    # Optimizer-specific settings (trainer.rules.OPTIMIZER_SETTINGS says whose); their
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
    # A loss above divergence_factor x the first step's loss (or NaN/inf) stops the run as diverged;
    # 0: only a non-finite loss does (the paper's runs: Tables 12-13 report finite losses of 11.6 to 345).
    divergence_factor: float = 2.0

    # Matmul precision: fp32 | tf32 (CUDA) | bf16 (autocast) | auto: bf16 on CUDA, fp32 on a CPU. Part
    # of a result: a run records the precision it resolved to, and its cell's key says it (sweeper.store.schema).
    precision: str = "auto"

    # Runtime: none of these change the result.
    device: str = _runtime("auto")  # auto | cpu | cuda
    compile: bool = _runtime(False)
    # Gradient accumulation: batch_size / micro_batch_size forward/backward passes per step, the same
    # step as one batch (trainer.microbatch); 0: the largest divisor of batch_size that fits the device.
    micro_batch_size: int = _runtime(0)
    activation_checkpointing: bool = _runtime(False)  # recompute each block in backward (deep cells)
    threads: int = _runtime(0)  # torch intra-op threads; 0 leaves torch's default
    # Data-parallel ranks of one cell (trainer.distributed): gpus_per_cell processes (on a CPU, that
    # many processes) on each of nodes_per_cell nodes, the same step as one process. A collective
    # that waits longer than collective_timeout_s (a rank died) fails the cell instead of hanging it.
    gpus_per_cell: int = _runtime(1)
    nodes_per_cell: int = _runtime(1)
    collective_timeout_s: int = _runtime(600)
    # Split weights, gradients and optimizer states over the ranks (FSDP2, trainer.sharding): for a
    # cell that one GPU does not hold whole; elementwise optimizers only (SHARDABLE_OPTIMIZERS).
    shard: bool = _runtime(False)
    run_dir: Optional[str] = _runtime(None)  # checkpoints and result.json; None: no checkpoints
    checkpoint_interval: int = _runtime(100)
    log_interval: int = _runtime(10)
    print_steps: bool = _runtime(True)  # a line on stderr every log_interval steps (a sweep's: verbose=true)
    # Live view of a run (trainer.tracking); the record stays the source of truth. A sweep names
    # each cell's run by its key, the group by its experiment, the project by WANDB_PROJECT or
    # the store's folder name, and puts TensorBoard files under STORE/tb unless tb_dir is set.
    logger: str = _runtime("none")  # none | tensorboard | wandb
    tb_dir: Optional[str] = _runtime(None)  # a run writes tb_dir/run_name; None: ./runs
    run_name: Optional[str] = _runtime(None)
    run_group: Optional[str] = _runtime(None)
    project: Optional[str] = _runtime(None)

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
        problems = setting_problems(self.to_dict())
        if problems:
            raise ValueError(problems[0])
        check_names(self.to_dict())
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} exceeds steps={self.steps}: "
                             f"the warmup must end within the run")
        if 0 < self.divergence_factor < 1:
            raise ValueError(f"divergence_factor={self.divergence_factor:g} would stop every run: use 0 "
                             f"(only a non-finite loss stops a run) or a factor of at least 1")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: choose {', '.join(PRECISIONS)}")
        # BOUNDS already keeps precondition_frequency and hessian_interval at 1 or more; sophia_rho's
        # range includes 0, which Sophia cannot use.
        if self.sophia_rho is not None and self.sophia_rho <= 0:
            raise ValueError(f"sophia_rho={self.sophia_rho} must be positive")
        if self.attention_scale not in ATTENTION_SCALES:
            raise ValueError(f"attention_scale={self.attention_scale!r}: choose {' or '.join(ATTENTION_SCALES)}")
        if self.tokenizer not in ("auto", "byte", "gpt2"):
            raise ValueError(f"tokenizer={self.tokenizer!r}: choose auto, byte or gpt2")
        if self.logger not in LOGGERS:
            raise ValueError(f"logger={self.logger!r}: choose {', '.join(LOGGERS)}")
        check_installed(self.logger)
        self.n_head()
        if self.micro_batch_size and self.batch_size % self.micro_batch_size:
            raise ValueError(f"micro_batch_size={self.micro_batch_size} does not divide batch_size="
                             f"{self.batch_size}: use one of {divisors(self.batch_size)} (or 0 for auto)")
        self.check_ranks()

    def check_ranks(self) -> None:
        """The batch of a cell of several ranks (trainer.distributed) splits into equal shares."""
        n = self.gpus_per_cell * self.nodes_per_cell
        if self.shard and n == 1:
            raise ValueError("shard=true splits a cell's weights over its ranks: give gpus_per_cell "
                             "(x nodes_per_cell) above 1")
        if self.shard and self.optimizer not in SHARDABLE_OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer} refuses shard=true: its update is a function of whole "
                             f"matrices (or of the whole batch), which a shard does not hold. Run it with "
                             f"shard=false (every GPU holds the whole model), or shard with optimizer="
                             f"{'|'.join(SHARDABLE_OPTIMIZERS)}")
        if n == 1:
            return
        if self.batch_size % n:
            raise ValueError(f"batch_size={self.batch_size} does not split over gpus_per_cell x nodes_per_cell "
                             f"= {n} ranks: use a batch_size divisible by {n}")
        share = self.batch_size // n
        if self.micro_batch_size and share % self.micro_batch_size:
            raise ValueError(f"micro_batch_size={self.micro_batch_size} does not divide the {share} rows of each "
                             f"of {n} ranks: use one of {divisors(share)} (or 0 for auto)")
        if self.optimizer == "sophia":
            raise ValueError("optimizer=sophia samples its Hessian estimate's labels over the whole batch in "
                             "one process: it runs with gpus_per_cell=1 and nodes_per_cell=1 only")


ATTENTION_SCALES = ("inv_sqrt_d", "inv_d")
# Optimizers whose update of an element needs only that element's gradient and state: exact on the
# shards of shard=true. Muon, Shampoo, SOAP and SSO take matrix functions of whole weights; Sophia
# samples over the whole batch.
SHARDABLE_OPTIMIZERS = ("adamw", "sgd", "lion")


PRECISIONS = ("auto", "fp32", "tf32", "bf16")
# What a record or checkpoint written before a result setting existed ran with, where that is not the
# setting's default: every run before precision was recorded in the config was keyed as fp32.
RECORDED_DEFAULTS = {"precision": "fp32"}


def recorded_default(name: str) -> Any:
    """The value a record or checkpoint that lacks setting ``name`` ran with."""
    return RECORDED_DEFAULTS.get(name, getattr(TrainConfig, name))


def resolve_precision(name: str, device_type: str) -> str:
    """auto: bf16 on CUDA, fp32 on a CPU (also one with AMX, where precision=bf16 trains faster: a CPU
    store means the same on every CPU). tf32 exists on CUDA only."""
    if name == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    if name == "tf32" and device_type != "cuda":
        raise ValueError("precision=tf32 needs CUDA: use fp32 or bf16 on a CPU")
    return name


def device_type(device: str) -> str:
    """"cuda" or "cpu": where device=auto|cpu|cuda[:N] runs on this machine (auto asks torch)."""
    if device == "auto":
        import torch  # only here: the sweeper reads configs without torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device.split(":")[0]


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# Inclusive ranges of the numeric settings. A value outside is a typo (2^70 for a width, a log2 lr of
# 300) that would only fail later, or be stored and break every reader of the store. The size limits
# are far beyond any model trained today (the paper's largest: width 4096, depth 256).
MAX_WIDTH = 2 ** 20
MAX_DEPTH = 2 ** 14
_MAX_COUNT = 2 ** 40  # steps, batch and sequence sizes, intervals: 10^12, within every int type used
BOUNDS: dict[str, tuple[float, float]] = {
    "width": (1, MAX_WIDTH), "base_width": (1, MAX_WIDTH), "head_dim": (1, MAX_WIDTH),
    "depth": (1, MAX_DEPTH), "base_depth": (1, MAX_DEPTH),
    "lr": (-64, 16),  # log2 eta_base: 5e-20 .. 65536
    "seed": (0, 2 ** 63 - 1), "vocab_size": (0, 2 ** 31 - 1),
    "batch_size": (1, _MAX_COUNT), "seq_len": (1, _MAX_COUNT), "steps": (0, _MAX_COUNT),
    "warmup_steps": (0, _MAX_COUNT), "eval_interval": (0, _MAX_COUNT), "eval_batches": (1, _MAX_COUNT),
    "init_std": (0, 1e6), "weight_decay": (0, 1e6), "adam_eps": (0, 1), "adam_beta1": (0, 1),
    "adam_beta2": (0, 1), "momentum": (0, 1), "lr_floor": (0, 1e6), "grad_clip": (0, 1e12),
    "divergence_factor": (0, 1e12), "precondition_frequency": (1, _MAX_COUNT),
    "hessian_interval": (1, _MAX_COUNT), "sophia_rho": (0, 1e12),
    "threads": (0, 2 ** 16), "gpus_per_cell": (1, 2 ** 16), "nodes_per_cell": (1, 2 ** 16),
    "collective_timeout_s": (1, 2 ** 31 - 1), "micro_batch_size": (0, _MAX_COUNT), "checkpoint_interval": (0, _MAX_COUNT), "log_interval": (1, _MAX_COUNT),
}


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


_KIND_WORDS = {"Any": "a mapping {name: value}"}


def setting_problems(values: dict) -> list[str]:
    """One line per setting in ``values`` of the wrong type or outside BOUNDS (None: not given).

    Used on configs before a run and on configs read back from a store or a CSV."""
    hints = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    problems = []
    for name, value in values.items():
        if value is None or name not in hints:
            continue
        kind = hints[name]
        if kind == "Any":  # model_args, model_roles: a mapping from Hydra's {key: value}
            ok = isinstance(value, dict) and all(isinstance(k, str) for k in value)
        elif "bool" in str(kind):
            ok = isinstance(value, bool)
        elif "int" in str(kind):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif "float" in str(kind):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok and not math.isfinite(value):
                problems.append(f"{name}={value!r} must be a finite number")
                continue
        else:
            ok = isinstance(value, str)
        if not ok:
            problems.append(f"{name}={value!r} must be {_KIND_WORDS.get(str(kind), str(kind).replace('Optional[', '').rstrip(']'))}")
        elif name in BOUNDS:
            low, high = BOUNDS[name]
            if not low <= value <= high:
                problems.append(f"{name}={value!r} is outside its range: {_number(low)} to {_number(high)}")
    return problems


def result_fields() -> list[str]:
    """The settings that change a run's result: a cell's identity."""
    return [f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("result", True)]
