"""Fine-tuning, linear probing and evaluation of ECG / CMR classifiers (eval-only with ckpt_path).

    python main_finetune.py [--config PATH] [-m] [--cfg job|hydra|all] [key=value ...]

See `python main_finetune.py --help` and the README for the command line.
"""
import logging
import sys

from util.cli import run_cli
from util.config import Config, ConfigError

log = logging.getLogger("main_finetune")


def main(cfg: Config) -> dict:
    """Run the finetune task described by `cfg`; returns its final metrics (the sweep objective)."""
    if cfg.get("model") is None:
        log.warning("no model selected (model=null): the composed config was written to %s and "
                    "nothing was trained. Choose an experiment, e.g. experiment=<name>.",
                    cfg.hydra.runtime.output_dir)
        return {}
    raise ConfigError("this version has no finetune objective yet (configs/model/ is empty), so "
                      "model must stay null; see the README's roadmap.")


if __name__ == "__main__":
    sys.exit(run_cli(main, primary="finetune"))
