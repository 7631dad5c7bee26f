"""util.config beyond the Hydra differential suite: Config, instantiate, YAML output,
the parsed-file cache, run-time values (now, output_dir, job.num) and import hygiene."""
import datetime as dt
import functools
import os
import subprocess
import sys
import textwrap

import pytest

from util.config import Config, ConfigError, compose, expand_sweeps, instantiate, load_yaml, to_yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(root, rel, text):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_config_attribute_access_and_nested_conversion():
    cfg = Config({"model": {"lr": 0.1, "layers": [{"dim": 4}]}})
    assert cfg.model.lr == 0.1
    assert cfg.model.layers[0].dim == 4
    cfg.model.extra = {"a": 1}
    assert cfg.model.extra.a == 1
    assert cfg.select("model.layers.0.dim") == 4 and cfg.select("model.nope", 7) == 7
    with pytest.raises(AttributeError, match="no key 'nope'"):
        _ = cfg.nope
    assert type(cfg.to_dict()["model"]) is dict


def test_a_missing_key_is_a_config_error_naming_the_full_key():
    import pickle

    from util.config import MissingKeyError, config_path

    cfg = Config({"model": {"optim": {"blr": 1e-4}, "heads": [{"dim": 4}]}})
    for read in (lambda: cfg.model.optim.lr_batch_divisor, lambda: cfg["model"]["optim"]["lr_batch_divisor"]):
        with pytest.raises(MissingKeyError, match=r"no key 'model\.optim\.lr_batch_divisor'.*keys here: blr"):
            read()
    assert issubclass(MissingKeyError, ConfigError) and issubclass(MissingKeyError, (AttributeError, KeyError))
    assert getattr(cfg.model, "nope", 7) == 7 and not hasattr(cfg, "nope")
    with pytest.raises(MissingKeyError, match=r"'model\.heads\[0\]\.width'"):
        _ = cfg.model.heads[0].width
    clone = pickle.loads(pickle.dumps(cfg))  # DataLoader workers and torch.distributed pickle configs
    assert config_path(clone.model.optim) == "model.optim" and clone == cfg
    node = instantiate(cfg.model)  # a node without _target_ stays a Config that knows its path
    with pytest.raises(MissingKeyError, match="model.optim.lr"):
        _ = node.optim.lr


def test_instantiate_names_the_node_whose_keys_do_not_fit():
    cfg = Config({"model": {"_target_": "tests.test_config_api.Point", "y": 1}})
    with pytest.raises(ConfigError, match=r"config node 'model' does not fit .*missing a required argument: 'x'"):
        instantiate(cfg.model)


class Point:
    def __init__(self, x, y=0, *, child=None):
        self.x, self.y, self.child = x, y, child


def test_instantiate_target_args_partial_and_recursion():
    node = {"_target_": "tests.test_config_api.Point", "x": 1,
            "child": {"_target_": "tests.test_config_api.Point", "x": 2}}
    obj = instantiate(node, y=5)
    assert (obj.x, obj.y, obj.child.x) == (1, 5, 2)
    assert instantiate({"_target_": "tests.test_config_api.Point", "_args_": [3, 4]}).y == 4
    part = instantiate({"_target_": "tests.test_config_api.Point", "_partial_": True, "y": 9})
    assert isinstance(part, functools.partial) and part(1).y == 9
    raw = instantiate({"_target_": "tests.test_config_api.Point", "_recursive_": False, "x": {"_target_": "x.y"}})
    assert raw.x == {"_target_": "x.y"}
    assert instantiate({"a": [{"_target_": "builtins.dict", "k": 1}]}) == {"a": [{"k": 1}]}
    with pytest.raises(ConfigError, match="Error locating target 'nowhere.Thing'"):
        instantiate({"_target_": "nowhere.Thing"})
    with pytest.raises(ConfigError, match="Error instantiating"):
        instantiate({"_target_": "tests.test_config_api.Point", "z": 1})


def test_to_yaml_round_trips_values_our_loader_would_retype():
    cfg = {"s": "1e-5", "d": "2024-01-01", "n": None, "f": 3e-6, "b": "true", "o": "off", "k": [1, "x"]}
    assert load_yaml(to_yaml(cfg)) == cfg
    assert list(load_yaml(to_yaml({"z": 1, "a": 2}))) == ["z", "a"]  # insertion order kept


def test_duplicate_keys_and_bad_yaml_name_the_file(tmp_path):
    write(tmp_path, "c.yaml", "a: 1\na: 2\n")
    with pytest.raises(ConfigError, match="duplicate key"):
        compose(str(tmp_path), "c")
    write(tmp_path, "d.yaml", "a: [1, 2\n")
    with pytest.raises(ConfigError, match="d.yaml"):
        compose(str(tmp_path), "d")
    write(tmp_path, "e.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        compose(str(tmp_path), "e")


def test_edited_file_is_reread_despite_the_parse_cache(tmp_path):
    path = write(tmp_path, "c.yaml", "a: 1\n")
    assert compose(str(tmp_path), "c").a == 1
    path.write_text("a: 22\n")
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse clocks
    assert compose(str(tmp_path), "c").a == 22


def test_now_is_one_timestamp_and_output_dir_follows_run_or_sweep_dir(tmp_path):
    write(tmp_path, "c.yaml", """\
        t: ${now:%Y%m%d-%H%M%S}
        out: ${hydra:runtime.output_dir}
        num: ${hydra:job.num}
        hydra:
          run:
            dir: /runs/${now:%H%M%S}
          sweep:
            dir: /sweeps/x
            subdir: job${hydra.job.num}
        """)
    when = dt.datetime(2025, 1, 2, 3, 4, 5)
    cfg = compose(str(tmp_path), "c", now=when)
    assert cfg.t == "20250102-030405" and cfg.out == "/runs/030405"
    assert cfg.num is None  # a single run has no job number; the hydra resolver gives None as Hydra does
    cfg = compose(str(tmp_path), "c", ["t=1,2"], mode="MULTIRUN", job_num=3, now=when)
    assert cfg.out == "/sweeps/x/job3" and cfg.num == 3 and cfg.hydra.mode == "MULTIRUN"


def test_expand_sweeps_refuses_interval_outside_hparams_search():
    with pytest.raises(ConfigError, match="interval"):
        expand_sweeps(["lr=interval(0.1,1.0)"])
    assert expand_sweeps(["a=1", "b=2"]) == [["a=1", "b=2"]]


def test_project_code_never_imports_hydra_or_omegaconf():
    offenders = []
    for folder, _, files in os.walk(REPO):
        if any(part in folder for part in (".git", "tests", "bench", ".venv")):
            continue
        for name in files:
            if name.endswith(".py"):
                text = open(os.path.join(folder, name), encoding="utf-8").read()
                for line in text.splitlines():
                    words = line.strip().split()
                    if words[:1] in (["import"], ["from"]) and len(words) > 1 \
                            and words[1].split(".")[0] in ("hydra", "omegaconf"):
                        offenders.append(f"{name}: {line.strip()}")
    assert offenders == []


def test_importing_the_composer_loads_neither_torch_nor_hydra():
    code = "import sys, util.config, util.cli; print(sorted(m for m in ('torch','hydra','omegaconf') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_delete_with_null_value_deletes_whatever_is_there(tmp_path):
    # Hydra writes `~key` as `~key=null` in sweep job overrides; both must delete the key
    write(tmp_path, "c.yaml", "a: 1\nb: 2\n")
    assert "a" not in compose(str(tmp_path), "c", ["~a=null"])
    with pytest.raises(ConfigError, match="is 1 and not 2"):
        compose(str(tmp_path), "c", ["~a=2"])
