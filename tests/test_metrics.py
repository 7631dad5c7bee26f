"""util.metrics against scikit-learn / numpy computed directly; undefined cases; bootstrap intervals."""
import math

import numpy as np
import pytest
import torch
from scipy.special import expit, softmax
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from util.metrics import MAIN_METRICS, bootstrap_ci, compute_metrics, numeric, predictions_from_logits

# any warning (UndefinedMetricWarning, ConstantInputWarning, ...) fails a test
pytestmark = pytest.mark.filterwarnings("error")

TOL = 1e-10


def close(a, b):
    return math.isclose(a, b, rel_tol=0, abs_tol=TOL)


def check_reasons(result):
    """Every NaN entry has a reason, and every reason belongs to a NaN entry."""
    nans = {k for k, v in numeric(result).items() if math.isnan(v)}
    assert nans == set(result["undefined"])


def multiclass_data(n=300, c=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.standard_normal((n, c)) + 1.5 * np.eye(c)[y]  # some signal
    return y, logits


def multilabel_data(n=300, c=5, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.3).astype(int)
    logits = rng.standard_normal((n, c)) + 1.5 * y - 0.7
    return y, logits


# --------------------------------------------------------------------------------------------- multiclass

def test_multiclass_equals_sklearn():
    y, logits = multiclass_data()
    names = ["norm", "mi", "sttc", "hyp"]
    r = compute_metrics("multiclass", y, logits, label_names=names)
    p = softmax(logits, axis=1)
    pred = p.argmax(1)
    assert close(r["accuracy"], skm.accuracy_score(y, pred))
    assert close(r["balanced_accuracy"], skm.balanced_accuracy_score(y, pred))
    assert close(r["f1_macro"], skm.f1_score(y, pred, average="macro"))
    assert close(r["auroc_macro"], skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert close(r["auprc_macro"], skm.average_precision_score(label_binarize(y, classes=range(4)), p, average="macro"))
    for k, name in enumerate(names):
        assert close(r[f"auroc/{name}"], skm.roc_auc_score(y == k, p[:, k]))
        assert close(r[f"auprc/{name}"], skm.average_precision_score(y == k, p[:, k]))
    assert r["n_classes_evaluated"] == 4 and r["skipped_classes"] == [] and r["undefined"] == {}
    assert "auroc" not in r  # binary-style numbers only for two classes
    assert all(type(v) is float for k, v in numeric(r).items() if k != "n_classes_evaluated")
    assert type(r["n_classes_evaluated"]) is int


def test_multiclass_two_classes_reports_class_one():
    y, logits = multiclass_data(c=2, seed=1)
    r = compute_metrics("multiclass", y, logits)
    p1 = softmax(logits, axis=1)[:, 1]
    assert close(r["auroc"], skm.roc_auc_score(y, p1))
    assert close(r["auprc"], skm.average_precision_score(y, p1))
    assert close(r["auroc_macro"], r["auroc"])
    assert close(r["auprc_macro"], np.mean([skm.average_precision_score(y == k, softmax(logits, axis=1)[:, k])
                                             for k in range(2)]))


def test_multiclass_absent_class_is_skipped():
    y, logits = multiclass_data(seed=2)
    y[y == 2] = 0  # class 2 never occurs in the targets
    r = compute_metrics("multiclass", y, logits)
    p = softmax(logits, axis=1)
    present = [0, 1, 3]
    assert r["skipped_classes"] == ["c2"] and r["n_classes_evaluated"] == 3
    assert math.isnan(r["auroc/c2"]) and "no positives" in r["undefined"]["auroc/c2"]
    assert close(r["auroc_macro"], np.mean([skm.roc_auc_score(y == k, p[:, k]) for k in present]))
    assert close(r["auprc_macro"], np.mean([skm.average_precision_score(y == k, p[:, k]) for k in present]))
    pred = p.argmax(1)
    assert close(r["balanced_accuracy"], np.mean([np.mean(pred[y == k] == k) for k in present]))
    check_reasons(r)


def test_multiclass_single_class_targets_give_nan_not_crash():
    _, logits = multiclass_data(seed=3)
    r = compute_metrics("multiclass", np.zeros(len(logits), dtype=int), logits)
    assert math.isnan(r["auroc_macro"]) and math.isnan(r["auprc_macro"])
    assert r["n_classes_evaluated"] == 0 and r["skipped_classes"] == ["c0", "c1", "c2", "c3"]
    assert "no negatives" in r["undefined"]["auroc/c0"]
    check_reasons(r)


def test_multiclass_one_hot_targets():
    y, logits = multiclass_data(seed=4)
    assert compute_metrics("multiclass", np.eye(4)[y], logits) == compute_metrics("multiclass", y, logits)


# --------------------------------------------------------------------------------------------- multilabel

def test_multilabel_equals_sklearn():
    y, logits = multilabel_data()
    r = compute_metrics("multilabel", y, logits)
    p = expit(logits)
    pred = (p > 0.5).astype(int)
    assert close(r["auroc_macro"], skm.roc_auc_score(y, p, average="macro"))
    assert close(r["auroc_micro"], skm.roc_auc_score(y, p, average="micro"))
    assert close(r["auprc_macro"], skm.average_precision_score(y, p, average="macro"))
    assert close(r["auprc_micro"], skm.average_precision_score(y, p, average="micro"))
    assert close(r["f1_macro"], skm.f1_score(y, pred, average="macro"))
    assert close(r["f1_micro"], skm.f1_score(y, pred, average="micro"))
    assert close(r["accuracy_subset"], skm.accuracy_score(y, pred))
    for k in range(y.shape[1]):
        assert close(r[f"auroc/c{k}"], skm.roc_auc_score(y[:, k], p[:, k]))
    assert r["n_classes_evaluated"] == 5 and r["skipped_classes"] == []


def test_multilabel_threshold():
    y, logits = multilabel_data(seed=1)
    pred = (expit(logits) > 0.3).astype(int)
    r = compute_metrics("multilabel", y, logits, threshold=0.3)
    assert close(r["f1_micro"], skm.f1_score(y, pred, average="micro"))


def test_multilabel_classes_without_positives_or_negatives_are_skipped():
    y, logits = multilabel_data(seed=5)
    y[:, 1] = 0  # no positives
    y[:, 3] = 1  # no negatives
    names = ["a", "b", "c", "d", "e"]
    r = compute_metrics("multilabel", y, logits, label_names=names)
    p = expit(logits)
    keep = [0, 2, 4]
    assert r["skipped_classes"] == ["b", "d"] and r["n_classes_evaluated"] == 3
    assert close(r["auroc_macro"], skm.roc_auc_score(y[:, keep], p[:, keep], average="macro"))
    assert close(r["auprc_macro"], skm.average_precision_score(y[:, keep], p[:, keep], average="macro"))
    # micro averages use every class
    assert close(r["auroc_micro"], skm.roc_auc_score(y, p, average="micro"))
    assert close(r["auprc_micro"], skm.average_precision_score(y, p, average="micro"))
    assert math.isnan(r["auroc/b"]) and "no positives" in r["undefined"]["auroc/b"]
    assert math.isnan(r["auprc/d"]) and "no negatives" in r["undefined"]["auprc/d"]
    assert close(r["auroc/c"], skm.roc_auc_score(y[:, 2], p[:, 2]))
    check_reasons(r)


def test_multilabel_all_negative_targets():
    y, logits = multilabel_data(seed=6)
    r = compute_metrics("multilabel", np.zeros_like(y), logits - 10)  # nothing positive, nothing predicted
    for key in ("auroc_macro", "auroc_micro", "auprc_macro", "auprc_micro", "f1_macro", "f1_micro"):
        assert math.isnan(r[key]) and key in r["undefined"]
    assert r["accuracy_subset"] == 1.0
    check_reasons(r)


# --------------------------------------------------------------------------------------------- binary

def test_binary_equals_sklearn_and_auprc_is_positive_class():
    rng = np.random.default_rng(7)
    y = (rng.random(400) < 0.2).astype(int)
    logits = rng.standard_normal(400) + 1.2 * y
    p = expit(logits)
    pred = (p > 0.5).astype(int)
    for targets, outputs in ((y, logits), (y[:, None], logits[:, None]), (y.astype(np.float32), logits[:, None])):
        r = compute_metrics("binary", targets, outputs)
        assert close(r["auroc"], skm.roc_auc_score(y, p))
        assert close(r["auprc"], skm.average_precision_score(y, p))
        assert close(r["f1"], skm.f1_score(y, pred))
        assert close(r["accuracy"], skm.accuracy_score(y, pred))
        assert close(r["balanced_accuracy"], skm.balanced_accuracy_score(y, pred))
    both = np.mean([skm.average_precision_score(y, p), skm.average_precision_score(1 - y, 1 - p)])
    assert abs(r["auprc"] - both) > 0.05  # not the reference's average over both classes


def test_binary_two_logit_outputs_use_softmax():
    rng = np.random.default_rng(8)
    y = rng.integers(0, 2, 200)
    logits = rng.standard_normal((200, 2))
    r = compute_metrics("binary", y, logits)
    assert close(r["auprc"], skm.average_precision_score(y, softmax(logits, axis=1)[:, 1]))


def test_binary_single_class_targets():
    logits = np.random.default_rng(9).standard_normal(50)
    r = compute_metrics("binary", np.ones(50), logits)
    assert math.isnan(r["auroc"]) and math.isnan(r["auprc"])
    assert r["undefined"]["auroc"] == "targets have no negatives"
    assert close(r["accuracy"], np.mean(logits > 0))
    check_reasons(r)


# --------------------------------------------------------------------------------------------- regression

def test_regression_equals_numpy_formulas():
    rng = np.random.default_rng(10)
    y = rng.standard_normal((200, 3)) * [1, 5, 0.1] + [0, 60, 1]
    out = y + rng.standard_normal((200, 3)) * [0.5, 3, 0.2]
    names = ["lvef", "hr", "qrs"]
    r = compute_metrics("regression", y, out, label_names=names)
    rmse = np.sqrt(np.mean((y - out) ** 2, axis=0))
    mae = np.mean(np.abs(y - out), axis=0)
    pearson = [np.corrcoef(y[:, t], out[:, t])[0, 1] for t in range(3)]
    r2 = 1 - np.sum((y - out) ** 2, axis=0) / np.sum((y - y.mean(0)) ** 2, axis=0)
    for t, name in enumerate(names):
        assert close(r[f"rmse/{name}"], rmse[t]) and close(r[f"mae/{name}"], mae[t])
        assert close(r[f"pearson_r/{name}"], pearson[t]) and close(r[f"r2/{name}"], r2[t])
    assert close(r["rmse"], rmse.mean()) and close(r["mae"], mae.mean())
    assert close(r["pearson_r"], np.mean(pearson)) and close(r["r2"], r2.mean())
    assert close(r["r2"], skm.r2_score(y, out))


def test_regression_single_target_has_no_per_target_keys():
    rng = np.random.default_rng(11)
    y = rng.standard_normal(100)
    out = y + rng.standard_normal(100)
    r = compute_metrics("regression", y, out[:, None])
    assert set(r) == {"rmse", "mae", "pearson_r", "r2", "undefined"}
    assert close(r["rmse"], np.sqrt(np.mean((y - out) ** 2)))


def test_regression_constant_target_and_constant_predictions():
    rng = np.random.default_rng(12)
    y = rng.standard_normal((100, 3))
    y[:, 1] = 2.0
    out = y + rng.standard_normal((100, 3))
    out[:, 2] = 0.5
    r = compute_metrics("regression", y, out)
    assert math.isnan(r["pearson_r/t1"]) and math.isnan(r["r2/t1"]) and "constant" in r["undefined"]["r2/t1"]
    assert math.isnan(r["pearson_r/t2"]) and "predictions" in r["undefined"]["pearson_r/t2"]
    assert close(r["pearson_r"], np.corrcoef(y[:, 0], out[:, 0])[0, 1])
    assert close(r["r2"], np.mean([r["r2/t0"], r["r2/t2"]]))
    assert close(r["rmse/t1"], np.sqrt(np.mean((out[:, 1] - 2.0) ** 2)))
    check_reasons(r)
    single = compute_metrics("regression", np.full(10, 3.0), rng.standard_normal(10))
    assert math.isnan(single["pearson_r"]) and single["undefined"]["pearson_r"] == "target 't0' is constant"


# --------------------------------------------------------------------------------------------- inputs

def test_torch_tensors_accepted():
    y, logits = multilabel_data(seed=13)
    logits32 = logits.astype(np.float32)
    expected = compute_metrics("multilabel", y, logits32)
    assert compute_metrics("multilabel", torch.from_numpy(y), torch.from_numpy(logits32)) == expected
    yc, lc = multiclass_data(seed=13)
    assert compute_metrics("multiclass", torch.from_numpy(yc), torch.from_numpy(lc).bfloat16())["accuracy"] > 0.4
    probs = predictions_from_logits("multiclass", torch.from_numpy(lc))
    assert isinstance(probs, np.ndarray) and np.allclose(probs.sum(1), 1)
    grad = torch.from_numpy(lc).requires_grad_()
    assert compute_metrics("multiclass", yc, grad)["accuracy"] == compute_metrics("multiclass", yc, lc)["accuracy"]


def test_predictions_from_logits():
    x = np.array([[0.0, np.log(3.0)]])
    assert np.allclose(predictions_from_logits("multiclass", x), [[0.25, 0.75]])
    assert np.allclose(predictions_from_logits("multilabel", x), [[0.5, 0.75]])
    assert np.allclose(predictions_from_logits("binary", x[:, 1:]), [[0.75]])
    assert np.array_equal(predictions_from_logits("regression", x), x)


@pytest.mark.parametrize("task,targets,outputs", [
    ("ordinal", np.zeros(3), np.zeros(3)),
    ("multiclass", np.array([0, 1, 3]), np.zeros((3, 3))),  # label out of range
    ("multiclass", np.array([0, 1, 2]), np.array([[0, 1, 2], [0, 1, np.nan], [0, 0, 0]])),
    ("multilabel", np.array([[0, 2]]), np.zeros((1, 2))),
    ("binary", np.zeros(3), np.zeros((3, 3))),
    ("regression", np.zeros((4, 2)), np.zeros((4, 3))),
    ("regression", np.zeros(0), np.zeros(0)),
])
def test_malformed_inputs_raise(task, targets, outputs):
    with pytest.raises(ValueError):
        compute_metrics(task, targets, outputs)


def test_label_names_must_match():
    y, logits = multiclass_data()
    with pytest.raises(ValueError, match="label_names"):
        compute_metrics("multiclass", y, logits, label_names=["a", "b"])


# --------------------------------------------------------------------------------------------- bootstrap

def binary_data(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, rng.standard_normal(n) + y


def test_bootstrap_contains_point_and_is_deterministic():
    y, logits = binary_data(300, 14)
    ci = bootstrap_ci("binary", y, logits, n_boot=60, seed=3)
    point = compute_metrics("binary", y, logits)
    for m in MAIN_METRICS["binary"]:
        low, high = ci[m]
        assert low <= point[m] <= high and low < high
        assert ci[f"n_boot_used/{m}"] == 60
    assert bootstrap_ci("binary", y, logits, n_boot=60, seed=3) == ci
    assert bootstrap_ci("binary", y, logits, metrics=["auroc"], n_boot=60, seed=4)["auroc"] != ci["auroc"]


def test_bootstrap_narrows_with_more_samples():
    widths = []
    for n in (100, 2000):
        y, logits = binary_data(n, 15)
        low, high = bootstrap_ci("binary", y, logits, metrics=["auroc"], n_boot=60)["auroc"]
        widths.append(high - low)
    assert widths[1] < widths[0] / 2


def test_bootstrap_other_tasks_and_per_class_metrics():
    y, logits = multilabel_data(n=120, seed=16)
    ci = bootstrap_ci("multilabel", y, logits, metrics=["auroc_macro", "auroc/c1"], n_boot=50, alpha=0.1)
    assert set(ci) == {"auroc_macro", "auroc/c1", "n_boot_used/auroc_macro", "n_boot_used/auroc/c1"}
    yr = np.random.default_rng(17).standard_normal((80, 2))
    ci = bootstrap_ci("regression", yr, yr + 0.3, n_boot=50)
    assert set(MAIN_METRICS["regression"]) <= set(ci)
    assert ci["pearson_r"][0] > 0.9


def test_bootstrap_drops_undefined_resamples():
    y = np.zeros(20, dtype=int)
    y[0] = 1  # one positive: many resamples have none
    logits = np.random.default_rng(18).standard_normal(20)
    ci = bootstrap_ci("binary", y, logits, metrics=["auroc", "accuracy"], n_boot=100)
    assert 0 < ci["n_boot_used/auroc"] < 100 and ci["n_boot_used/accuracy"] == 100
    none = bootstrap_ci("binary", np.zeros(20), logits, metrics=["auroc"], n_boot=20)
    assert none["n_boot_used/auroc"] == 0 and all(math.isnan(v) for v in none["auroc"])


def test_bootstrap_unknown_metric():
    y, logits = binary_data(50, 19)
    with pytest.raises(ValueError, match="unknown metric"):
        bootstrap_ci("binary", y, logits, metrics=["auroc_macro"])
