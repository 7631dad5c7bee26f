"""Differential tests: util.config against recorded hydra-core 1.3.2 / omegaconf 2.3.0 results.

The cases live in tests/config_cases/cases.py (config trees next to it); the expected
results in tests/fixtures/hydra_expected.json were produced by real Hydra with
    /work/scratch/hydra-venv/bin/python tests/fixtures/gen_hydra_fixtures.py
This file never imports hydra or omegaconf.

Comparison rules
  * compose: the job config (everything but key `hydra`) must be equal, including the
    key ORDER of every dict and the exact scalar types (1 vs 1.0 vs True vs "1");
    the process cwd is replaced by "<CWD>" in strings; nan/inf are tagged in the JSON.
    Listed `hydra_keys` (dotted paths into the `hydra` node) must be equal too (dict key
    order ignored there; hydra/* entries of hydra.runtime.choices are ignored).
  * defaults: list of {config_path, package, is_self} in final merge order.
  * sweep: list of jobs, each a list of "key=value" strings.
  * refusals: ConfigError (not any other exception) whose message contains every
    `mentions` substring.
"""

import importlib.util
import json
import math
import os
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CASES_DIR = REPO / "tests" / "config_cases"
FIXTURE = REPO / "tests" / "fixtures" / "hydra_expected.json"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _load_cases_module():
    spec = importlib.util.spec_from_file_location("config_cases_cases", CASES_DIR / "cases.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_CASES_MOD = _load_cases_module()
CASES = _CASES_MOD.CASES
CLEAR_ENV = list(_CASES_MOD.CLEAR_ENV)
ALL_ENV = sorted(set(CLEAR_ENV) | {k for c in CASES for k in (c.get("env") or {})})
EXPECTED = json.loads(FIXTURE.read_text(encoding="utf-8")) if FIXTURE.exists() else {"cases": {}}

try:
    from util import config as _config_mod

    _IMPORT_ERROR = None
except Exception as _e:  # noqa: BLE001 - reported per test
    _config_mod = None
    _IMPORT_ERROR = f"{type(_e).__name__}: {_e}"


def _api():
    if _config_mod is None:
        pytest.fail(f"util.config cannot be imported: {_IMPORT_ERROR}")
    return _config_mod


# --------------------------------------------------------------------------------------
# normalisation and comparison helpers
# --------------------------------------------------------------------------------------
def _decode(x):
    """JSON fixture value -> python value (tagged floats back to float)."""
    if isinstance(x, dict):
        if set(x) == {"__float__"}:
            return float(x["__float__"])
        return {k: _decode(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_decode(v) for v in x]
    return x


def _plain(x, cwd):
    """Actual value -> plain dict/list/scalars, cwd replaced by <CWD>."""
    if isinstance(x, dict):
        return {k: _plain(v, cwd) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v, cwd) for v in x]
    if isinstance(x, str):
        return x.replace(cwd, "<CWD>") if cwd else str(x)
    return x


def _tname(x):
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "bool"
    if isinstance(x, int):
        return "int"
    if isinstance(x, float):
        return "float"
    if isinstance(x, str):
        return "str"
    if isinstance(x, dict):
        return "dict"
    if isinstance(x, list):
        return "list"
    return type(x).__name__


def _diff(exp, act, path="", ordered=True):
    """First difference between exp and act as a one-line string, or None."""
    where = path or "<root>"
    te, ta = _tname(exp), _tname(act)
    if te != ta:
        return f"{where}: expected {te} {exp!r:.120}, got {ta} {act!r:.120}"
    if te == "dict":
        ek, ak = list(exp), list(act)
        missing = [k for k in ek if k not in act]
        extra = [k for k in ak if k not in exp]
        if missing or extra:
            return f"{where}: keys missing {missing} / unexpected {extra}"
        for k in ek:
            d = _diff(exp[k], act[k], f"{path}.{k}" if path else str(k), ordered)
            if d:
                return d
        if ordered and ek != ak:
            return f"{where}: key order expected {ek}, got {ak}"
        return None
    if te == "list":
        if len(exp) != len(act):
            return f"{where}: expected list of {len(exp)} {exp!r:.160}, got {len(act)} {act!r:.160}"
        for i, (e, a) in enumerate(zip(exp, act)):
            d = _diff(e, a, f"{path}[{i}]", ordered)
            if d:
                return d
        return None
    if te == "float":
        if math.isnan(exp) and math.isnan(act):
            return None
        if exp == act:
            return None
        return f"{where}: expected {exp!r}, got {act!r}"
    if exp != act:
        return f"{where}: expected {exp!r:.200}, got {act!r:.200}"
    return None


def _apply_env(monkeypatch, case):
    # same cwd as the generator (repo root): hydra:runtime.cwd and relative paths agree
    monkeypatch.chdir(REPO)
    for k in ALL_ENV:
        monkeypatch.delenv(k, raising=False)
    for k, v in (case.get("env") or {}).items():
        if v is None:
            monkeypatch.delenv(k, raising=False)
        else:
            monkeypatch.setenv(k, str(v))


def _hydra_key(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def _run(case):
    api = _api()
    tree = str(CASES_DIR / case["tree"])
    kind = case["kind"]
    if kind == "compose":
        return api.compose(tree, case["config_name"], list(case["overrides"]), mode=case.get("mode", "RUN"))
    if kind == "defaults":
        return api.defaults_list(tree, case["config_name"], list(case["overrides"]))
    if kind == "sweep":
        params = case.get("sweeper_params") or {}
        args = [f"{k}={v}" for k, v in params.items()] + list(case["overrides"])
        return api.expand_sweeps(args, config_dir=tree)
    raise AssertionError(f"unknown kind {kind}")


def _check_ok(case, exp, result):
    cwd = os.getcwd()
    kind = case["kind"]
    if kind == "compose":
        assert isinstance(result, dict), f"compose returned {type(result).__name__}, not a dict"
        act = _plain({k: v for k, v in result.items() if k != "hydra"}, cwd)
        d = _diff(_decode(exp["config"]), act)
        assert d is None, f"job config differs: {d}"
        for key, ev in _decode(exp.get("hydra", {})).items():
            try:
                av = _plain(_hydra_key(result, key), cwd)
            except KeyError:
                pytest.fail(f"{key}: missing from the composed config")
            if key == "hydra.runtime.choices" and isinstance(av, dict):
                av = {k: v for k, v in av.items() if not k.startswith("hydra/")}
            d = _diff(ev, av, key, ordered=False)
            assert d is None, f"hydra key differs: {d}"
    elif kind == "defaults":
        act = [
            {"config_path": e.get("config_path"), "package": e.get("package"), "is_self": e.get("is_self")}
            for e in result
        ]
        d = _diff(exp["defaults"], act)
        assert d is None, f"defaults list differs: {d}\n expected {exp['defaults']}\n got      {act}"
    elif kind == "sweep":
        act = _plain(result, None)
        d = _diff(exp["jobs"], act)
        assert d is None, f"sweep jobs differ: {d}\n expected {exp['jobs']}\n got      {act}"


# --------------------------------------------------------------------------------------
# the differential test
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_matches_hydra(case, monkeypatch):
    exp = EXPECTED["cases"].get(case["id"])
    if exp is None:
        pytest.fail("no fixture for this case: regenerate tests/fixtures/hydra_expected.json")
    api = _api()
    _apply_env(monkeypatch, case)

    if not exp["ok"]:
        try:
            result = _run(case)
        except api.ConfigError as e:
            msg = str(e)
            missing = [m for m in case.get("mentions", []) if m not in msg]
            assert not missing, (
                f"ConfigError message lacks {missing}: {msg!r:.400}\n"
                f" Hydra said ({exp['error_type']}): {exp['message']!r:.400}"
            )
            return
        except Exception as e:  # noqa: BLE001
            pytest.fail(
                f"raised {type(e).__name__} instead of ConfigError: {str(e)!r:.300}\n"
                f" Hydra said ({exp['error_type']}): {exp['message']!r:.300}"
            )
        pytest.fail(
            f"no error (returned {str(result)[:200]}); Hydra refused with {exp['error_type']}: {exp['message']!r:.300}"
        )

    try:
        result = _run(case)
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"raised {type(e).__name__}: {str(e)!r:.400} (Hydra succeeded)")
    _check_ok(case, exp, result)


# --------------------------------------------------------------------------------------
# guards
# --------------------------------------------------------------------------------------
def test_fixture_covers_every_case():
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    missing = [i for i in ids if i not in EXPECTED["cases"]]
    stale = [i for i in EXPECTED["cases"] if i not in ids]
    assert not missing and not stale, (
        f"fixture out of date (missing {missing}, stale {stale}); run "
        "/work/scratch/hydra-venv/bin/python tests/fixtures/gen_hydra_fixtures.py"
    )
    for c in CASES:
        rec = EXPECTED["cases"][c["id"]]
        assert rec["ok"] == ("mentions" not in c), f"{c['id']}: refusal flag does not match the fixture"


def test_case_counts():
    compose = [c for c in CASES if c["kind"] == "compose"]
    refusals = [c for c in CASES if "mentions" in c]
    assert len(compose) >= 80
    assert len(refusals) >= 20
    assert len([c for c in CASES if c["kind"] == "defaults"]) >= 8
    assert len([c for c in CASES if c["kind"] == "sweep"]) >= 10


def test_no_hydra_or_omegaconf_imports():
    pat = re.compile(r"^\s*(?:import|from)\s+(?:hydra|omegaconf)\b", re.M)
    for path in [Path(__file__), CASES_DIR / "cases.py", REPO / "util" / "config.py"]:
        if path.exists():
            assert not pat.search(path.read_text(encoding="utf-8")), f"{path} imports hydra/omegaconf"


def test_config_is_a_dict_with_attribute_access(monkeypatch):
    api = _api()
    case = next(c for c in CASES if c["id"] == "seed_train_default")
    _apply_env(monkeypatch, case)
    cfg = api.compose(str(CASES_DIR / "seed"), "train", [])
    assert isinstance(cfg, dict) and isinstance(cfg["model"], dict)
    assert cfg.model.learning_rate == cfg["model"]["learning_rate"] == 3e-6
    assert cfg.model.patch_size == [1, 100]
    assert "hydra" in cfg


def test_now_is_one_timestamp_per_run(monkeypatch):
    api = _api()
    _apply_env(monkeypatch, {})
    cfg = api.compose(str(CASES_DIR / "interp"), "now", [])
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d-\d{6}", cfg["a"]), cfg["a"]
    assert cfg["a"] == cfg["b"] == cfg["c"]
    assert cfg["nested"]["d"] == "run_" + cfg["a"]
