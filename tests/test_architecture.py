"""The shape of the code: imports point down only (mains -> engine -> models, datasets -> util), the
engine and util know no modality, and the entry points stay short and share no code."""
import ast
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("util", "models", "datasets")
MAINS = ("main_pretrain", "main_finetune", "main_artifacts")

# which project modules each layer may import (besides itself)
ALLOWED = {
    "util": {"util"},
    "models": {"util", "models"},
    "datasets": {"util", "datasets"},
    "engine": {"util", "models", "datasets"},
}


def project_files():
    for name in os.listdir(REPO):
        if name.endswith(".py") and name[:-3] in (*MAINS, "engine"):
            yield name[:-3], os.path.join(REPO, name)
    for package in PACKAGES:
        for root, _, files in os.walk(os.path.join(REPO, package)):
            for f in files:
                if f.endswith(".py"):
                    yield package, os.path.join(root, f)


def imported_modules(path):
    """Every module an import statement names, at any depth (function-level imports too)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, node.lineno


def layer_of(module):
    top = module.split(".")[0]
    if top in PACKAGES or top == "engine":
        return top
    if top in MAINS:
        return "main"
    return None  # third-party or standard library


def test_imports_point_down_only():
    violations = []
    for layer, path in project_files():
        for module, line in imported_modules(path):
            target = layer_of(module)
            if target is None:
                continue
            if layer in MAINS:
                ok = target != "main"
            else:
                ok = target in ALLOWED[layer]
            if not ok:
                violations.append(f"{os.path.relpath(path, REPO)}:{line} ({layer}) imports {module}")
    assert not violations, "\n".join(violations)


def test_the_layering_check_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import engine\n    from datasets.ecg import ECGDataset\n")
    seen = {layer_of(m) for m, _ in imported_modules(str(bad))}
    assert {"engine", "datasets"} <= seen and not ALLOWED["util"] & seen


MODALITY_WORDS = re.compile(r"\becg\b|\bleads?\b|electrode|12-lead|ptb-?xl|arrhythmia"
                       r"|\bcmr\b|\bmri\b|resnet|simclr|\bacdc\b|short-axis", re.IGNORECASE)


def test_engine_and_util_name_no_modality():
    hits = []
    paths = [os.path.join(REPO, "engine.py")] + [os.path.join(REPO, "util", f)
                                                  for f in os.listdir(os.path.join(REPO, "util")) if f.endswith(".py")]
    for path in paths:
        for i, line in enumerate(open(path, encoding="utf-8"), 1):
            if MODALITY_WORDS.search(line):
                hits.append(f"{os.path.relpath(path, REPO)}:{i}: {line.strip()}")
    assert not hits, "\n".join(hits)


@pytest.mark.parametrize("main", ["main_pretrain.py", "main_finetune.py"])
def test_each_training_main_is_under_150_lines(main):
    with open(os.path.join(REPO, main), encoding="utf-8") as f:
        assert len(f.readlines()) < 150


def code_lines(path):
    """Lines of code without blanks, comments, docstrings and imports, whitespace folded."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            skip.update(range(node.lineno, node.end_lineno + 1))
        if isinstance(node, ast.Expr) and isinstance(getattr(node, "value", None), ast.Constant) \
                and isinstance(node.value.value, str):
            skip.update(range(node.lineno, node.end_lineno + 1))
    out = []
    for i, line in enumerate(open(path, encoding="utf-8"), 1):
        text = " ".join(line.split("#")[0].split())
        if i not in skip and text and text not in ("(", ")", "]", "}", "):", "else:", "try:"):
            out.append(text)
    return out


def shared_runs(a, b, n=6):
    grams = {tuple(a[i:i + n]) for i in range(len(a) - n + 1)}
    return [b[i:i + n] for i in range(len(b) - n + 1) if tuple(b[i:i + n]) in grams]


def test_the_training_mains_share_no_block_of_six_lines():
    a = code_lines(os.path.join(REPO, "main_pretrain.py"))
    b = code_lines(os.path.join(REPO, "main_finetune.py"))
    assert shared_runs(a, b) == []
    assert shared_runs(a, a[10:16] + ["x"]) == [a[10:16]]  # the check finds a copied block
