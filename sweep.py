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

from sweeper.argv import prepare
from sweeper.schema import SweepAppConfig

ROOT = Path(__file__).resolve().parent
CONF_DIR = ROOT / "conf"


@hydra.main(config_path="conf", config_name="sweep", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from sweeper.job import hydra_job

    return hydra_job(cfg)


if __name__ == "__main__":
    known = set(SweepAppConfig.__dataclass_fields__) | {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
    try:
        sys.argv[1:] = prepare(sys.argv[1:], known)
    except ValueError as err:
        sys.exit(f"error: {err}")
    # submitit jobs (local or Slurm) unpickle this app's task in a fresh interpreter: let them
    # import sweeper/ and trainer/ from this checkout even when it is not pip-installed.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    main()
