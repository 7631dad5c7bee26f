"""MIMIC-IV-ECG: about 800,000 diagnostic 12-lead ECGs (10 s, 500 Hz) of about 160,000 patients, WFDB.

Raw layout (the PhysioNet download, https://physionet.org/content/mimic-iv-ecg/)::

    record_list.csv           subject_id, study_id, file_name, ecg_time, path; path is the WFDB
                              record relative to the raw folder without extension, e.g.
                              files/p1000/p10000032/s40689238/40689238
    machine_measurements.csv  (optional) subject_id, study_id, ..., report_0 ... report_17: the
                              ECG machine's free-text statements, one per column
    files/p..../p<subject>/s<study>/<study>.hea, .dat

Options:

    --labels none | report   none (default): unlabelled records (task_type None), for pretraining;
                             report: multilabel from the machine statements through KEYWORDS below

Out: record_id = study_id, patient_id = subject_id, no official split; extra holds ecg_time;
with --labels report, label_names = the sorted KEYWORDS labels that occur.
index() reads only the CSVs, with pandas, never a signal file: the set is too big for anything
per record. With --labels report a record without a machine report, or whose report matches none
of the keywords, is left out and counted in ``excluded``. ``read`` returns the WFDB record as
stored: (12, T) in the header's units (mV) at 500 Hz, leads named as the header names them.

KEYWORDS: label -> regular expression searched in each of the record's statements (report_N cells),
lower-cased (so matching is case-insensitive); a record has a label when any statement matches. There is no negation handling: the machine
statements assert findings ("Sinus rhythm", "Possible inferior infarct - age undetermined").

    sinus rhythm                     "sinus rhythm"
    sinus bradycardia                "sinus bradycardia"
    sinus tachycardia                "sinus tachycardia"
    atrial fibrillation              "atrial fibrillation"
    atrial flutter                   "atrial flutter"
    1st degree AV block              "1st|first degree A-V|AV block"
    LBBB / RBBB                      "left|right bundle branch block" not preceded by "incomplete ",
                                     or the abbreviation LBBB / RBBB
    left axis deviation              "left axis deviation"
    ventricular premature complexes  "ventricular premature complex|beat|contraction",
                                     "premature ventricular complex|beat|contraction", "PVC(s)"
    ST changes                       "ST(-T) (segment) changes|depression|elevation|abnormality",
                                     "ST and T wave"
    T wave changes                   "T wave(s) changes|abnormality|inversion|flattening", "ST-T",
                                     "ST and T wave"
    myocardial infarction            any "infarct" (infarct, infarction, age undetermined or not)
    left ventricular hypertrophy     "left ventricular hypertrophy", "LVH"
    pacemaker                        "pacemaker" (not "wandering atrial pacemaker"), "paced", "pacing"
"""
from __future__ import annotations

import argparse
import gc
import re
from pathlib import Path

import numpy as np
import pandas as pd

from datasets.sources import RecordRef, Signal
from datasets.sources.ptbxl import read_wfdb_signal
from util.errors import ConfigError

__all__ = ["MimicIVECGSource", "KEYWORDS", "match_keywords"]

LABEL_MODES = ("none", "report")

# label -> pattern over the lower-cased report (non-capturing groups: pandas warns about captures)
KEYWORDS = {
    "sinus rhythm": r"\bsinus rhythm\b",
    "sinus bradycardia": r"\bsinus bradycardia\b",
    "sinus tachycardia": r"\bsinus tachycardia\b",
    "atrial fibrillation": r"\batrial fibrillation\b",
    "atrial flutter": r"\batrial flutter\b",
    "1st degree AV block": r"\b(?:1st|first)[- ]degree a-?v block\b",
    "LBBB": r"(?<!incomplete )\bleft bundle[- ]branch block\b|\blbbb\b",
    "RBBB": r"(?<!incomplete )\bright bundle[- ]branch block\b|\brbbb\b",
    "left axis deviation": r"\bleft axis deviation\b",
    "ventricular premature complexes": (r"\bventricular premature (?:complex|beat|contraction)"
                                        r"|\bpremature ventricular (?:complex|beat|contraction)|\bpvcs?\b"),
    "ST changes": (r"\bst[- ](?:t[- ])?(?:segment[- ])?(?:changes?|depression|elevation|abnormalit)"
                   r"|\bst and t[- ]waves?\b"),
    "T wave changes": (r"\bt[- ]waves? (?:changes?|abnormalit|inversion|flattening)|\bst[- ]t\b"
                       r"|\bst and t[- ]waves?\b"),
    "myocardial infarction": r"infarct",
    "left ventricular hypertrophy": r"\bleft ventricular hypertrophy\b|\blvh\b",
    "pacemaker": r"(?<!wandering atrial )\bpacemaker\b|\bpaced\b|\bpacing\b",
}
RECORD_COLUMNS = ("subject_id", "study_id", "path")
_REPORT_COLUMN = re.compile(r"report_\d+")


def match_keywords(texts: pd.Series) -> pd.DataFrame:
    """One boolean column per KEYWORDS label: which texts mention it (case-insensitive)."""
    lowered = texts.fillna("").astype(str).str.lower()
    return pd.DataFrame({label: lowered.str.contains(pattern, regex=True) for label, pattern in KEYWORDS.items()},
                        index=texts.index)


def _id_column(values: pd.Series) -> pd.Series:
    """Ids as decimal strings (a CSV may write "123" or "123.0"), "" where there is none."""
    number = pd.to_numeric(values, errors="coerce")
    usable = number.notna() & (number >= 0) & (number % 1 == 0)
    text = pd.Series("", index=values.index, dtype=object)
    text[usable] = number[usable].astype(np.int64).astype(str)
    return text


class MimicIVECGSource:
    """MIMIC-IV-ECG 12-lead ECGs (WFDB), unlabelled or with keyword labels from the machine reports."""

    name = "mimic_iv_ecg"
    modality = "ecg"
    provenance = ("MIMIC-IV-ECG: Diagnostic Electrocardiogram Matched Subset 1.0 (Gow et al. 2023), "
                  "https://physionet.org/content/mimic-iv-ecg/ (ODbL 1.0), doi:10.13026/4nqg-sb35")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--labels", choices=LABEL_MODES, default="none",
                            help="none: unlabelled (default); report: keyword labels from machine_measurements.csv")

    def __init__(self, raw: Path, options: argparse.Namespace) -> None:
        self.raw = Path(raw)
        self.labels = getattr(options, "labels", "none")
        if self.labels not in LABEL_MODES:
            raise ConfigError(f"mimic_iv_ecg: --labels {self.labels!r} is not none or report")
        self.index_problems: list[tuple[str, str]] = []
        self.excluded: dict[str, int] = {}
        self.task_type = "multilabel" if self.labels == "report" else None
        self.label_names: list[str] = []

    def _records(self) -> pd.DataFrame:
        """record_list.csv as record_id, patient_id, location (+ ecg_time), unusable rows reported."""
        path = self.raw / "record_list.csv"
        if not path.is_file():
            raise ConfigError(f"mimic_iv_ecg: {path} not found; --raw must be the MIMIC-IV-ECG folder")
        table = pd.read_csv(path, dtype=str, usecols=lambda c: c in (*RECORD_COLUMNS, "ecg_time"))
        missing = [c for c in RECORD_COLUMNS if c not in table.columns]
        if missing:
            raise ConfigError(f"mimic_iv_ecg: {path} lacks the columns {', '.join(missing)}")
        frame = pd.DataFrame({"record_id": _id_column(table.study_id), "patient_id": _id_column(table.subject_id),
                              "path": table.path.fillna("").str.strip(),
                              "ecg_time": table.ecg_time if "ecg_time" in table.columns else None})
        bad = (frame.record_id == "") | (frame.patient_id == "") | (frame.path == "")
        for row in frame[bad].itertuples(index=False):
            what = "study_id" if not row.record_id else "subject_id" if not row.patient_id else "path"
            self.index_problems.append((row.record_id or "?", f"record_list.csv row without a usable {what}"))
        frame = frame[~bad]
        repeated = frame.record_id.duplicated()
        self.index_problems += [(rid, "study_id appears more than once in record_list.csv")
                                for rid in frame.record_id[repeated]]
        frame = frame[~repeated]
        frame = frame.assign(location=str(self.raw) + "/" + frame.path.str.lstrip("/"))
        return frame.sort_values("record_id", kind="stable").reset_index(drop=True)

    def _report_masks(self) -> pd.Series:
        """study_id -> bit mask over KEYWORDS (bit j: label j) of that study's machine statements;
        studies whose report cells are all empty are left out.

        The keywords are matched once per distinct statement, not per record: the machine writes
        templated statements, so 800k reports hold few distinct ones. Each pattern is matched
        within one statement (cell).
        """
        path = self.raw / "machine_measurements.csv"
        if not path.is_file():
            raise ConfigError(f"mimic_iv_ecg: --labels report needs {path}, which is not there")
        table = pd.read_csv(path, dtype=str, usecols=lambda c: c == "study_id" or bool(_REPORT_COLUMN.fullmatch(c)))
        columns = [c for c in table.columns if c != "study_id"]
        if "study_id" not in table.columns or not columns:
            raise ConfigError(f"mimic_iv_ecg: {path} lacks study_id or the report_N columns")
        cells = table[columns].to_numpy(dtype=object)
        codes, statements = pd.factorize(cells.ravel())  # missing cells get code -1
        statements = pd.Series(statements, dtype=object)
        hits = match_keywords(statements).to_numpy()
        bits = hits.astype(np.int64) @ (np.int64(1) << np.arange(hits.shape[1], dtype=np.int64))
        blank = statements.str.strip().eq("").to_numpy()
        present = (codes >= 0) & ~blank[np.maximum(codes, 0)]
        masks = np.where(present, bits[np.maximum(codes, 0)], 0).reshape(cells.shape)
        reported = present.reshape(cells.shape).any(axis=1)
        keyed = pd.Series(np.bitwise_or.reduce(masks, axis=1)[reported], index=_id_column(table.study_id)[reported].values)
        return keyed[(keyed.index != "") & ~keyed.index.duplicated()]

    def index(self) -> list[RecordRef]:
        # millions of new small objects: the cyclic garbage collector would rescan them over and
        # over (index() takes 5x longer with it); nothing here makes reference cycles
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._index()
        finally:
            if collecting:
                gc.enable()

    def _index(self) -> list[RecordRef]:
        self.index_problems, self.excluded = [], {}
        frame = self._records()
        labels = [None] * len(frame)
        if self.labels == "report":
            masks = frame.record_id.map(self._report_masks())
            no_report = masks.isna().to_numpy()
            masks = masks.fillna(0).astype(np.int64).to_numpy()
            no_keyword = (masks == 0) & ~no_report
            if no_report.any():
                self.excluded["no machine report"] = int(no_report.sum())
            if no_keyword.any():
                self.excluded["no statement of the keyword table"] = int(no_keyword.sum())
            keep = masks != 0
            frame, masks = frame[keep].reset_index(drop=True), masks[keep]
            # a few hundred distinct label combinations: each list built once, per record a copy
            names = list(KEYWORDS)
            combos = {m: [names[j] for j in range(len(names)) if (m >> j) & 1] for m in np.unique(masks).tolist()}
            labels = [combos[m].copy() for m in masks.tolist()]
            self.label_names = sorted({name for combo in combos.values() for name in combo})
        times = frame.ecg_time.tolist() if frame.ecg_time.notna().any() else [None] * len(frame)
        return [RecordRef(record_id=rid, patient_id=pid, labels=lab, split=None, location=loc,
                          extra={} if t is None or t != t else {"ecg_time": t})
                for rid, pid, loc, lab, t in zip(frame.record_id.tolist(), frame.patient_id.tolist(),
                                                 frame.location.tolist(), labels, times)]

    def read(self, ref: RecordRef) -> Signal:
        return read_wfdb_signal(ref.location)
