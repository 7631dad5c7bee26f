"""Every shipped experiment composes and passes the config checks, and every real-data modality
config names a store that the README says how to ingest."""
import os
import re

import pytest

import engine
from datasets.sources import SOURCES
from util.cli import CONFIG_DIR
from util.config import compose, load_yaml

REPO = os.path.dirname(CONFIG_DIR)
EXPERIMENTS = sorted(f"{group}/{name[:-5]}" for group in ("pre_training", "fine_tuning")
                     for name in os.listdir(os.path.join(CONFIG_DIR, "experiment", group)) if name.endswith(".yaml"))
MODALITIES = sorted(f"{kind}/{name[:-5]}" for kind in os.listdir(os.path.join(CONFIG_DIR, "modality"))
                    for name in os.listdir(os.path.join(CONFIG_DIR, "modality", kind)) if name.endswith(".yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_passes_the_config_checks(experiment, tmp_path):
    primary = "pretrain" if experiment.startswith("pre_training") else "finetune"
    cfg = compose(CONFIG_DIR, primary, [f"experiment={experiment}", f"paths.log_dir={tmp_path}"])
    engine.check_config(cfg)
    assert cfg.data.dataset_key == cfg.modality.dataset_key


@pytest.mark.parametrize("modality", [m for m in MODALITIES if not m.endswith("/demo")])
def test_every_real_data_modality_has_an_ingest_command_in_the_readme(modality):
    key = load_yaml(open(os.path.join(CONFIG_DIR, "modality", f"{modality}.yaml")).read())["dataset_key"]
    readme = open(os.path.join(REPO, "README.md")).read()
    commands = re.findall(rf"python -m datasets\.ingest (\w+) [^\n`]*--out data/{key}\b", readme)
    assert commands, f"the README has no `python -m datasets.ingest ... --out data/{key}` for modality {modality}"
    assert all(source in SOURCES for source in commands)
