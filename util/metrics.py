"""Evaluation metrics for the four task types, and percentile bootstrap confidence intervals.

Inputs are numpy arrays or torch tensors; ``outputs`` are raw model outputs:

  multiclass  targets (N,) class index (or (N, C) one-hot)   outputs (N, C) logits -> softmax
  multilabel  targets (N, C) 0/1                             outputs (N, C) logits -> sigmoid
  binary      targets (N,) or (N, 1) 0/1                     outputs (N,) or (N, 1) logit -> sigmoid
                                                             (or (N, 2) logits -> softmax, class 1)
  regression  targets (N,) or (N, T)                         outputs of the same size, used as is

The metrics themselves are scikit-learn's (and scipy's Pearson r). Results are flat dicts of
floats plus a few info entries (``n_classes_evaluated`` int, ``skipped_classes`` list of names,
``undefined`` {key: reason}); ``numeric(metrics)`` keeps only the numbers, for loggers.

A metric that is undefined on the data never raises:
- a class with no positives or no negatives in the targets has NaN ``auroc/<name>`` and
  ``auprc/<name>``, is left out of ``auroc_macro`` / ``auprc_macro`` and is listed in
  ``skipped_classes`` (micro averages use every class);
- an F1 that is 0/0 (no positives in targets or predictions) is NaN and left out of ``f1_macro``;
- a regression target that is constant has NaN ``pearson_r`` and ``r2`` (constant predictions:
  NaN ``pearson_r``), left out of the averages over targets;
- every NaN in a result has its reason in ``undefined``; an average is NaN only when nothing
  it averages is defined.
Malformed inputs (wrong shapes, labels out of range, non-finite outputs) raise ValueError.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import special, stats
from sklearn import metrics as skm

TASK_TYPES = ("multiclass", "multilabel", "binary", "regression")

# What bootstrap_ci resamples by default.
MAIN_METRICS = {
    "multiclass": ("accuracy", "balanced_accuracy", "f1_macro", "auroc_macro", "auprc_macro"),
    "multilabel": ("auroc_macro", "auroc_micro", "auprc_macro", "auprc_micro", "f1_macro", "f1_micro"),
    "binary": ("auroc", "auprc", "f1", "accuracy", "balanced_accuracy"),
    "regression": ("rmse", "mae", "pearson_r", "r2"),
}


def predictions_from_logits(task_type: str, logits) -> np.ndarray:
    """Probabilities from logits (softmax for multiclass, sigmoid for multilabel / binary; a
    binary (N, 2) output gets softmax); regression values are returned as they are (float64)."""
    x = _numpy(logits).astype(np.float64)
    if task_type == "multiclass" or (task_type == "binary" and x.ndim == 2 and x.shape[1] == 2):
        return special.softmax(x, axis=-1)
    if task_type in ("multilabel", "binary"):
        return special.expit(x)
    if task_type == "regression":
        return x
    raise ValueError(f"unknown task_type '{task_type}' (expected one of {', '.join(TASK_TYPES)})")


def compute_metrics(task_type: str, targets, outputs, *, label_names=None, threshold=0.5) -> dict:
    """All metrics of ``task_type`` (see the module docstring for the keys and undefined cases).
    ``threshold`` applies to sigmoid probabilities (multilabel, binary F1 / accuracy)."""
    y, p, names = _prepare(task_type, targets, outputs, label_names)
    return _COMPUTE[task_type](y, p, names, threshold)


def bootstrap_ci(task_type, targets, outputs, *, metrics=None, n_boot=1000, seed=0, alpha=0.05,
                 label_names=None, threshold=0.5) -> dict:
    """Percentile bootstrap intervals ``{metric: (low, high)}`` over ``n_boot`` resamples of the N
    samples (with replacement, seeded). Resamples where a metric is NaN are dropped; the count
    kept is ``n_boot_used/<metric>`` ((nan, nan) when none is kept). Default metrics: MAIN_METRICS;
    any numeric key of compute_metrics may be asked for. A macro average in a resample is over the
    classes evaluable in that resample. Cost: n_boot calls of the task's metrics (sklearn-bound)."""
    y, p, names = _prepare(task_type, targets, outputs, label_names)
    compute = _COMPUTE[task_type]
    metrics = list(MAIN_METRICS[task_type] if metrics is None else metrics)
    available = numeric(compute(y, p, names, threshold))
    unknown = [m for m in metrics if m not in available]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown} for task_type '{task_type}'; "
                         f"available: {', '.join(available)}")
    rng = np.random.default_rng(seed)
    values = np.empty((n_boot, len(metrics)))
    for b in range(n_boot):
        idx = rng.integers(0, len(y), size=len(y))
        result = compute(y[idx], p[idx], names, threshold)
        values[b] = [result[m] for m in metrics]
    out = {}
    for j, m in enumerate(metrics):
        kept = values[~np.isnan(values[:, j]), j]
        if len(kept):
            low, high = np.percentile(kept, [100 * alpha / 2, 100 * (1 - alpha / 2)])
            out[m] = (float(low), float(high))
        else:
            out[m] = (math.nan, math.nan)
        out[f"n_boot_used/{m}"] = int(len(kept))
    return out


def numeric(metrics: dict) -> dict:
    """Only the numeric entries of a metrics dict (drops ``skipped_classes`` and ``undefined``)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# ---------------------------------------------------------------------------------------------
# Input checks


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor; bfloat16 has no numpy dtype
        x = x.detach().cpu()
        x = (x.double() if x.is_floating_point() else x).numpy()
    return np.asarray(x)


def _labels01(y: np.ndarray, what: str) -> np.ndarray:
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"{what} targets must be 0/1")
    return y.astype(np.int64)


def _names(label_names, n: int, prefix: str) -> list:
    if label_names is None:
        return [f"{prefix}{i}" for i in range(n)]
    names = [str(name) for name in label_names]
    if len(names) != n:
        raise ValueError(f"{len(names)} label_names for {n} outputs")
    return names


def _prepare(task_type, targets, outputs, label_names):
    """Checked (targets, probabilities or values, names) for one task type."""
    p = predictions_from_logits(task_type, outputs)
    y = _numpy(targets)
    n = len(p)
    if n == 0 or len(y) != n:
        raise ValueError(f"need matching non-empty targets and outputs, got {y.shape} and {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError(f"outputs contain {int((~np.isfinite(p)).sum())} non-finite values")
    if task_type == "multiclass":
        if p.ndim != 2 or p.shape[1] < 2:
            raise ValueError(f"multiclass outputs must be (N, C) with C >= 2, got {p.shape}")
        if y.ndim == 2 and y.shape[1] > 1:  # one-hot
            y = y.argmax(1)
        y = y.reshape(n)
        if not (np.equal(np.mod(y, 1), 0).all() and y.min() >= 0 and y.max() < p.shape[1]):
            raise ValueError(f"multiclass targets must be class indices in [0, {p.shape[1]})")
        return y.astype(np.int64), p, _names(label_names, p.shape[1], "c")
    if task_type == "multilabel":
        if p.ndim != 2 or y.shape != p.shape:
            raise ValueError(f"multilabel targets and outputs must both be (N, C), got {y.shape} and {p.shape}")
        return _labels01(y, "multilabel"), p, _names(label_names, p.shape[1], "c")
    if task_type == "binary":
        p = p[:, 1] if p.ndim == 2 and p.shape[1] == 2 else p.reshape(n, -1)
        if p.ndim == 2 and p.shape[1] != 1 or y.size != n:
            raise ValueError(f"binary targets and outputs must be (N,) or (N, 1), got {y.shape} and {p.shape}")
        return _labels01(y.reshape(n), "binary"), p.reshape(n), None
    y, p = y.astype(np.float64).reshape(n, -1), p.reshape(n, -1)
    if y.shape != p.shape:
        raise ValueError(f"regression targets and outputs differ in size: {y.shape} vs {p.shape}")
    if not np.isfinite(y).all():
        raise ValueError("regression targets contain non-finite values")
    return y, p, _names(label_names, y.shape[1], "t")


# ---------------------------------------------------------------------------------------------
# Metrics per task type; each takes checked arrays and returns the result dict


_INFO = ("n_classes_evaluated", "skipped_classes")


def _undefined(out: dict, key: str, reason: str) -> None:
    out[key] = math.nan
    out["undefined"][key] = reason


def _finish(out: dict, first=()) -> dict:
    """Keys in ``first`` first, floats everywhere, a reason for every NaN, ``undefined`` last."""
    undefined = out.pop("undefined")
    out = {**{k: out[k] for k in first if k in out}, **out}
    for key, value in out.items():
        if isinstance(value, (float, np.floating)):
            out[key] = float(value)
            if math.isnan(value) and key not in undefined:
                undefined[key] = "0/0: no positives in targets or predictions"
    out["undefined"] = undefined
    return out


def _mean(out: dict, key: str, values: list, reason: str) -> None:
    values = [v for v in values if not math.isnan(v)]
    if values:
        out[key] = float(np.mean(values))
    else:
        _undefined(out, key, reason)


def _ranking(out: dict, onehot: np.ndarray, p: np.ndarray, names: list) -> None:
    """Per-class one-vs-rest AUROC / AUPRC and their macro means over the evaluable classes."""
    positives = onehot.sum(0)
    evaluable = (positives > 0) & (positives < len(onehot))
    aurocs = auprcs = []
    if evaluable.any():  # one call over all evaluable columns: much faster than one per class
        aurocs = np.atleast_1d(skm.roc_auc_score(onehot[:, evaluable], p[:, evaluable], average=None))
        auprcs = np.atleast_1d(skm.average_precision_score(onehot[:, evaluable], p[:, evaluable], average=None))
    scores = iter(zip(aurocs, auprcs))
    for name, ok, n_pos in zip(names, evaluable, positives):
        if ok:
            out[f"auroc/{name}"], out[f"auprc/{name}"] = next(scores)
        else:
            reason = f"class '{name}' has no {'positives' if n_pos == 0 else 'negatives'} in targets"
            _undefined(out, f"auroc/{name}", reason)
            _undefined(out, f"auprc/{name}", reason)
    reason = "no class has both positives and negatives in targets"
    _mean(out, "auroc_macro", [float(a) for a in aurocs], reason)
    _mean(out, "auprc_macro", [float(a) for a in auprcs], reason)
    out["n_classes_evaluated"] = int(evaluable.sum())
    out["skipped_classes"] = [name for name, ok in zip(names, evaluable) if not ok]


def _balanced_accuracy(y, pred) -> float:
    with warnings.catch_warnings():  # predicted classes absent from targets: recall is over targets' classes
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return skm.balanced_accuracy_score(y, pred)


def _multiclass(y, p, names, threshold) -> dict:
    n_classes = p.shape[1]
    pred = p.argmax(1)
    out = {"undefined": {}}
    out["accuracy"] = skm.accuracy_score(y, pred)
    out["balanced_accuracy"] = _balanced_accuracy(y, pred)
    # macro over the classes present in targets or predictions (scikit-learn's default)
    out["f1_macro"] = skm.f1_score(y, pred, average="macro", zero_division=np.nan)
    onehot = (y[:, None] == np.arange(n_classes)).astype(np.int64)
    _ranking(out, onehot, p, names)
    if n_classes == 2:  # binary-style numbers on class 1
        for metric in ("auroc", "auprc"):
            out[metric] = out[f"{metric}/{names[1]}"]
            if math.isnan(out[metric]):
                out["undefined"][metric] = out["undefined"][f"{metric}/{names[1]}"]
    return _finish(out, first=MAIN_METRICS["multiclass"] + ("auroc", "auprc", *_INFO))


def _multilabel(y, p, names, threshold) -> dict:
    pred = (p > threshold).astype(np.int64)
    out = {"undefined": {}}
    _ranking(out, y, p, names)
    if 0 < y.sum() < y.size:
        out["auroc_micro"] = skm.roc_auc_score(y, p, average="micro")
        out["auprc_micro"] = skm.average_precision_score(y, p, average="micro")
    else:
        _undefined(out, "auroc_micro", "targets have no positives or no negatives at all")
        _undefined(out, "auprc_micro", "targets have no positives or no negatives at all")
    out["f1_macro"] = skm.f1_score(y, pred, average="macro", zero_division=np.nan)
    out["f1_micro"] = skm.f1_score(y, pred, average="micro", zero_division=np.nan)
    out["accuracy_subset"] = skm.accuracy_score(y, pred)
    return _finish(out, first=MAIN_METRICS["multilabel"] + ("accuracy_subset", *_INFO))


def _binary(y, p, names, threshold) -> dict:
    pred = (p > threshold).astype(np.int64)
    out = {"undefined": {}}
    if 0 < y.sum() < len(y):
        out["auroc"] = skm.roc_auc_score(y, p)
        out["auprc"] = skm.average_precision_score(y, p)  # positive class only
    else:
        reason = f"targets have no {'positives' if y.sum() == 0 else 'negatives'}"
        _undefined(out, "auroc", reason)
        _undefined(out, "auprc", reason)
    out["f1"] = skm.f1_score(y, pred, zero_division=np.nan)
    out["accuracy"] = skm.accuracy_score(y, pred)
    out["balanced_accuracy"] = _balanced_accuracy(y, pred)
    return _finish(out)


def _pearson(y, p) -> float:
    with warnings.catch_warnings():  # exactly constant inputs are handled by the caller
        warnings.simplefilter("ignore", stats.NearConstantInputWarning)
        return stats.pearsonr(y, p).statistic


def _regression(y, p, names, threshold) -> dict:
    n_targets = y.shape[1]
    per_target = {}
    undefined = {}
    for t, name in enumerate(names):
        yt, pt = y[:, t], p[:, t]
        key = name if n_targets > 1 else None
        row = {"rmse": skm.root_mean_squared_error(yt, pt), "mae": skm.mean_absolute_error(yt, pt)}
        if np.ptp(yt) == 0:
            row["pearson_r"] = row["r2"] = math.nan
            undefined["pearson_r", key] = undefined["r2", key] = f"target '{name}' is constant"
        else:
            row["r2"] = skm.r2_score(yt, pt)
            if np.ptp(pt) == 0:
                row["pearson_r"] = math.nan
                undefined["pearson_r", key] = f"predictions for target '{name}' are constant"
            else:
                row["pearson_r"] = _pearson(yt, pt)
        per_target[name] = row
    out = {"undefined": {}}
    for metric in ("rmse", "mae", "pearson_r", "r2"):
        values = [float(row[metric]) for row in per_target.values()]
        reason = undefined.get((metric, None), "undefined for every target")
        _mean(out, metric, values, reason)
    if n_targets > 1:
        for metric in ("rmse", "mae", "pearson_r", "r2"):
            for name, row in per_target.items():
                out[f"{metric}/{name}"] = row[metric]
                if (metric, name) in undefined:
                    out["undefined"][f"{metric}/{name}"] = undefined[metric, name]
    return _finish(out)


_COMPUTE = {"multiclass": _multiclass, "multilabel": _multilabel, "binary": _binary,
            "regression": _regression}


# ---- representation monitors ---------------------------------------------------------------------------
PROBE_C = 0.01  # inverse L2 strength of the logistic-regression probe on standardised features
MONITOR_METRICS = {"multiclass": ("accuracy", "auroc_macro"), "multilabel": ("auroc_macro",),
                   "binary": ("auroc",)}


def _as_logits(task_type: str, p: np.ndarray) -> np.ndarray:
    """Scores in [0, 1] as the logits ``compute_metrics`` expects (softmax / sigmoid undo them)."""
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p) if task_type == "multiclass" else np.log(p / (1 - p))


def embedding_monitors(task_type: str, features, labels, *, k: int = 20, folds: int = 5, seed: int = 0) -> dict:
    """How well the labels can be read off embeddings of one split, without training the encoder:

    * ``knn_<metric>``: leave-one-out k-nearest neighbours by cosine similarity (each sample's label
      scores are its k neighbours' mean label: class votes, or label frequencies for multilabel);
    * ``probe_<metric>``: a logistic regression (L2, ``C = PROBE_C``) on standardised features,
      out-of-fold predictions of a ``folds``-fold cross-validation stratified by the label.

    Metrics: accuracy and macro AUROC (multiclass), macro AUROC (multilabel), AUROC (binary). Returns
    ``{}`` for regression or unlabelled data; the probe is left out when the split has fewer than
    2 * folds samples or (multiclass) a class has fewer than 2, and a label with fewer than 2
    positives or negatives gets no probe of its own (multilabel, binary)."""
    if task_type not in MONITOR_METRICS:
        return {}
    x = _numpy(features).astype(np.float64).reshape(len(features), -1)
    y = _numpy(labels)
    n = len(x)
    if n < 3:
        return {}
    if task_type == "multiclass":
        y = (y.argmax(1) if y.ndim == 2 and y.shape[1] > 1 else y.reshape(n)).astype(np.int64)
        n_classes = int(max(y.max() + 1, 2))
        targets = np.eye(n_classes)[y]
    else:
        y = y.reshape(n, -1).astype(np.float64)
        targets = y
    out = {}
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    kk = int(min(k, n - 1))
    neighbours = np.argpartition(-similarity, kk - 1, axis=1)[:, :kk]
    knn_scores = targets[neighbours].mean(axis=1)
    scores = {"knn": knn_scores}

    probe = _probe_predictions(task_type, x, y, targets, folds, seed)
    if probe is not None:
        scores["probe"] = probe
    for name, p in scores.items():
        if task_type == "binary":
            p = p.reshape(n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            metrics = compute_metrics(task_type, y if task_type != "multilabel" else targets, _as_logits(task_type, p))
        for metric in MONITOR_METRICS[task_type]:
            out[f"{name}_{metric}"] = metrics[metric]
    return out


def _probe_predictions(task_type, x, y, targets, folds, seed):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = len(x)
    if n < 2 * folds:
        return None
    # strongly regularised: stable to the last digits under float noise in the features (C=1 is not),
    # and no worse a probe on a few hundred samples of 512-2048 features
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=1000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if task_type == "multiclass":
            counts = np.bincount(y, minlength=targets.shape[1])
            present = counts[counts > 0]
            if len(present) < 2 or present.min() < 2:
                return None
            splitter = StratifiedKFold(n_splits=int(min(folds, present.min())), shuffle=True, random_state=seed)
            p = cross_val_predict(probe, x, y, cv=splitter, method="predict_proba")
            full = np.zeros((n, targets.shape[1]))
            full[:, np.flatnonzero(counts > 0)] = p  # columns of the classes present
            return full
        columns = []
        for c in range(targets.shape[1]):  # one probe per label, folds stratified by it
            column = targets[:, c].astype(np.int64)
            minority = int(min(column.sum(), n - column.sum()))
            if minority < 2:  # too few positives (or negatives) to cross-validate: its AUROC is left out
                columns.append(np.full(n, column.mean()))
                continue
            splitter = StratifiedKFold(n_splits=int(min(folds, minority)), shuffle=True, random_state=seed)
            columns.append(cross_val_predict(probe, x, column, cv=splitter, method="predict_proba")[:, 1])
        return np.stack(columns, axis=1)
