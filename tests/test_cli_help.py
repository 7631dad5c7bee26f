"""``--help`` of the entry points (config groups, nested options, the primary's defaults list) and
``extras.print_config`` (the config as a compact or full tree in the job's log)."""
import glob
import logging
import os
import subprocess
import sys

import pytest

from util import cli
from util.errors import ConfigError
from util.schema import check

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_help(script, *args):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, script, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


def help_groups(text):
    """{group: [options]} of the groups section of --help (wrapped lines joined)."""
    section = text.split("== Config groups of", 1)[1].split("\n\n", 2)[1]
    groups, current = {}, None
    for line in section.splitlines():
        if line.startswith("  ") and not line.startswith("   ") and ":" in line:
            current, _, rest = line.strip().partition(":")
            groups[current] = rest.strip()
        elif current is not None:
            groups[current] += " " + line.strip()
    return {g: [o.strip() for o in text.split(",")] for g, text in groups.items()}


def help_defaults(text):
    section = text.split("== Defaults list of", 1)[1].split("\n\n", 2)[1]
    return [" ".join(line.split()) for line in section.splitlines()]


def in_process_help(primary, *args, capsys):
    """--help through ``run_cli`` in this process (argparse exits with code 0)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        cli.run_cli(lambda cfg: {}, primary, argv=list(args), prog=f"main_{primary}.py")
    assert stop.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("script", ["main_finetune.py", "main_pretrain.py", "main_artifacts.py"])
def test_help_lists_groups_nested_options_and_the_defaults_list(script, capsys):
    primary = script[len("main_"):-len(".py")]
    if script == "main_finetune.py":  # the script itself once; the same run_cli for the others
        res = run_help(script, "--help")
        assert res.returncode == 0, res.stderr
        out = res.stdout
    else:
        out = in_process_help(primary, "--help", capsys=capsys)
    assert out.startswith(f"usage: {script}") and "--job-index N" in out  # argparse's flags are kept
    groups = help_groups(out)
    for group in ("data", "model", "modality", "trainer", "callbacks", "logger", "paths", "extras", "hydra",
                  "debug", "experiment", "hparams_search"):
        assert group in groups, group
    assert {"cmr_acdc", "ecg_demo", "ecg_ptbxl"} <= set(groups["experiment/fine_tuning"])
    assert {"ecg_demo", "mmcl_demo"} <= set(groups["experiment/pre_training"])
    assert groups["hydra/sweeper"] == ["basic", "optuna"]
    assert {"demo", "ptbxl", "arrhythmia"} <= set(groups["modality/ecg"])
    assert {"mae", "ecg_classifier"} <= set(groups["model"]) and "default" in groups["trainer"]
    assert list(groups).index("data") < list(groups).index("experiment")  # the primary's order
    defaults = help_defaults(out)
    assert defaults[0] == "_self_"
    keys = [d.split(":")[0] for d in defaults[1:] if ":" in d and not d.startswith("(")]
    assert keys[:4] == ["data", "model", "modality", "trainer"] and keys[-1] == "debug"
    experiment = next(d for d in defaults if d.startswith("experiment:")).split()[1]
    assert experiment.endswith("/ecg_demo"), experiment
    assert f"Defaults list of {primary}" in out
    data = next(d for d in defaults if d.startswith("data:"))
    assert data.split()[1] == "null" and "->" in data  # the choice the experiment makes
    for hint in ("group=option", "+key=value", "~key", "-m key=a,b", "--cfg job", "--info defaults"):
        assert hint in out, hint


def test_help_follows_config_given_before_it(tmp_path, capsys):
    out = in_process_help("pretrain", "--config", "configs/experiment/pre_training/cmr_demo.yaml", "--help",
                          capsys=capsys)
    experiment = next(d for d in help_defaults(out) if d.startswith("experiment:"))
    assert experiment.split()[1:] == ["pre_training/ecg_demo", "->", "pre_training/cmr_demo"]
    # a standalone config dir: its own groups and primary
    (tmp_path / "color" / "warm").mkdir(parents=True)
    (tmp_path / "app.yaml").write_text("defaults:\n  - color: blue\n  - _self_\nx: 1\n")
    (tmp_path / "color" / "blue.yaml").write_text("hue: 240\n")
    (tmp_path / "color" / "warm" / "red.yaml").write_text("hue: 0\n")
    out = in_process_help("finetune", "--config", str(tmp_path / "app.yaml"), "-h", capsys=capsys)
    assert help_groups(out) == {"color": ["blue"], "color/warm": ["red"]}
    assert help_defaults(out) == ["color: blue", "_self_"]
    out = in_process_help("finetune", "--config", "nope.yaml", "--help", capsys=capsys)  # configs/ instead
    assert "nope.yaml" in out and "experiment/fine_tuning" in help_groups(out)

CFG = {
    "model": {"net": {"encoder": {"depth": 12, "heads": 8}, "width": 256}, "lr": 0.1},
    "seed": 7,
    "data": {"batch_size": 4, "leads": ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2"], "note": ""},
    "hydra": {"run": {"dir": "somewhere"}},
    "paths": {"log_dir": "./logs"},
}
CHOICES = {"experiment": "fine_tuning/ecg_demo", "data": "ecg", "model": "mae", "paths": "default",
           "hparams_search": None, "hydra/sweeper": "basic"}


def test_compact_tree_orders_sections_shows_choices_and_collapses_deep_nodes():
    text = cli.config_tree(CFG, CHOICES, "compact")
    lines = text.splitlines()
    assert lines[0] == "CONFIG (experiment=fine_tuning/ecg_demo)"
    assert lines[1] == "├── data (ecg)"  # data before model, whatever the config's order
    assert "├── model (mae)" in lines and "├── paths (default)" in lines and "└── seed: 7" in lines
    assert lines.index("├── model (mae)") < lines.index("├── paths (default)") < lines.index("└── seed: 7")
    assert "│   ├── net" in lines and "│   │   ├── encoder: {2 keys}" in lines  # a third level collapses
    assert not any("depth" in line for line in lines)
    assert "│   │   └── width: 256" in lines and "│   └── lr: 0.1" in lines
    assert '│   └── note: ""' in lines
    assert "│   ├── leads: [I, II, III, aVR, aVL, ... (+3 more)]" in lines
    assert "hydra" not in text and "somewhere" not in text


def test_full_tree_shows_every_key():
    lines = cli.config_tree(CFG, CHOICES, "full").splitlines()
    assert "│   │   ├── encoder" in lines and "│   │   │   ├── depth: 12" in lines
    assert "│   │   │   └── heads: 8" in lines
    assert "│   ├── leads: [I, II, III, aVR, aVL, aVF, V1, V2]" in lines
    assert "{2 keys}" not in "\n".join(lines)


def _printed(caplog, value):
    caplog.clear()
    cfg = dict(CFG, extras={"print_config": value, "enforce_tags": False})
    with caplog.at_level(logging.INFO, logger="cli"):
        cli.apply_extras(cfg, CHOICES)
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "cli")


def test_print_config_values(caplog):
    assert "encoder: {2 keys}" in _printed(caplog, "compact")
    assert "encoder: {2 keys}" in _printed(caplog, True)  # true means compact
    full = _printed(caplog, "full")
    assert "depth: 12" in full and full.startswith("config:\nCONFIG (experiment=")
    assert _printed(caplog, False) == "" and _printed(caplog, None) == ""
    with pytest.raises(ConfigError, match="compact, full"):
        _printed(caplog, "yes")
    for ok in ("compact", "full", True, False, None):
        assert check({"ignore_warnings": False, "enforce_tags": True, "print_config": ok},
                     cli.EXTRAS_SCHEMA, "extras") == [], ok
    assert check({"ignore_warnings": False, "enforce_tags": True, "print_config": "yes"},
                 cli.EXTRAS_SCHEMA, "extras")


def test_a_run_logs_the_tree_with_its_group_choices(tmp_path):
    argv = [f"paths.log_dir={tmp_path}", "extras.print_config=compact", "tags=[t]"]
    assert cli.run_cli(lambda cfg: {}, "finetune", argv=argv, prog="main_finetune.py") == 0
    argv_off = [f"paths.log_dir={tmp_path}/off", "extras.print_config=false", "tags=[t]"]
    assert cli.run_cli(lambda cfg: {}, "finetune", argv=argv_off, prog="main_finetune.py") == 0
    root = logging.getLogger()
    for handler in [h for h in root.handlers if str(tmp_path) in getattr(h, "baseFilename", "")]:
        root.removeHandler(handler)  # the runs' log files
        handler.close()
    (log_file,) = glob.glob(str(tmp_path / "finetune" / "runs" / "*" / "finetune.log"))
    text = open(log_file).read()
    assert "CONFIG (experiment=fine_tuning/ecg_demo" in text
    assert "├── data (ecg)" in text and "├── modality (ecg/demo)" in text and "├── trainer (default)" in text
    assert "└── print_config: compact" in text and "├── hydra" not in text
    (off_log,) = glob.glob(str(tmp_path / "off" / "finetune" / "runs" / "*" / "finetune.log"))
    assert "CONFIG" not in open(off_log).read()
