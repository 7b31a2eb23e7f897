"""Sweep entry point: expand a grid, train every cell, store one record per cell.

    python sweep.py -m width=128,...,4096 lr=-10:-5
    python sweep.py -m experiment=paper_table9 store=/shared/store
    python sweep.py -m experiment=smoke hydra/launcher=submitit_local

Config: conf/sweep.yaml (sweeper: hydra_plugins/mutransfer_sweeper). Status: python -m sweeper status.
"""
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from sweeper.grid.argv import prepare
from sweeper.grid.app_config import SweepAppConfig

ROOT = Path(__file__).resolve().parent
CONF_DIR = ROOT / "conf"

HELP = """mutransfer sweep: train every (width, depth, lr) cell of a grid, one record per cell in the store.

  python sweep.py -m experiment=cpu_width
  python sweep.py -m width=128,...,4096 lr=-10:-5 seed=0,1,2 store=store
  python -m sweeper status --store store      python -m analysis report --store store --out report

lr is log2 of eta_base (lr=-8 trains at eta_base = 2^-8 ~ 0.0039); a plain lr=0.001 is refused.
Grid forms on the axes width, depth, lr, param, optimizer, layernorm, seed:
  a,...,b   doubling a, 2a, 4a, ..., b      (width=128,...,4096)
  a:b       every integer a..b; a:b:s steps of s   (lr=-10:-5, lr=-10:-5:0.5)
  a,b,c     a list                          (param=sp,mup)
Main settings:
  experiment=NAME   conf/experiment/NAME.yaml: settings and its default grid (smoke, cpu_width, paper_table9)
  param=mup|sp|mup_k1   optimizer=muon_kimi|muon|adamw|sgd|lion   width=  depth=  lr=  seed=
  model=package.module:factory   your own model (default trainer.model:gpt2; docs/byo_model.md)
  store=DIR         the result store (default: store); cells already there are skipped
  force=true        rerun cells the store already holds
  jobs=auto|N       cells at once on this machine
  cluster=NAME      conf/cluster/NAME.yaml: run each cell as a Slurm job (cluster=local: the test cluster)
  search=transfer   size by size, only the lrs where each size's optimum can be
  logger=tensorboard|wandb   runs named by their settings; verbose=true: Hydra's launcher lines too
Checked before anything trains: lr given as eta, grid syntax, Slurm tools and profile, prepared data.

Hydra's help and the full config follow.
"""


@hydra.main(config_path="conf", config_name="sweep", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from sweeper.jobs.job import hydra_job

    return hydra_job(cfg)


if __name__ == "__main__":
    if {"--help", "-h"} & set(sys.argv[1:]):
        print(HELP)
    known = set(SweepAppConfig.__dataclass_fields__) | {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
    try:
        sys.argv[1:] = prepare(sys.argv[1:], known)
    except ValueError as err:
        sys.exit(f"error: {err}")
    # submitit jobs (local or Slurm) unpickle this app's task in a fresh interpreter: let them
    # import sweeper/ and trainer/ from this checkout even when it is not pip-installed.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    main()
