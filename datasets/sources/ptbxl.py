"""PTB-XL: 21,799 clinical 12-lead ECGs (10 s) of 18,869 patients, in WFDB format.

Raw layout (the PhysioNet download, https://physionet.org/content/ptb-xl/)::

    ptbxl_database.csv   one row per ECG: ecg_id, patient_id, age, sex, scp_codes (a Python dict
                         string, statement -> likelihood), strat_fold (1-10), filename_lr and
                         filename_hr (WFDB record paths relative to the raw folder, no extension)
    scp_statements.csv   one row per SCP statement (the first, unnamed column is the code) with
                         diagnostic / form / rhythm (1.0 or empty), diagnostic_class (NORM, MI,
                         STTC, CD, HYP) and diagnostic_subclass
    records500/...       the 500 Hz records (filename_hr); records100/... the 100 Hz ones (filename_lr)

Options:

    --labels all | diagnostic | subdiagnostic | superdiagnostic | form | rhythm
             (default superdiagnostic) the label sets of the PTB-XL benchmark (Strodthoff et al.
             2020; their compute_label_aggregations in github.com/helme/ecg_ptbxl_benchmarking,
             code/utils/utils.py): a record's statements are the keys of scp_codes whatever their
             likelihood; ``all`` keeps every statement, ``diagnostic`` / ``form`` / ``rhythm`` the
             statements with 1.0 in that column of scp_statements.csv, ``subdiagnostic`` /
             ``superdiagnostic`` map the diagnostic statements to their diagnostic_subclass /
             diagnostic_class (statements without one add nothing).
    --rate 500 | 100   read filename_hr (records500, default) or filename_lr (records100). This is
             the ingest's own --rate (the store's sampling rate, datasets/ingest.py), not a second
             option: a store at 100 Hz or less is made from records100 (no resampling), any
             other rate from records500. Standalone (a parser without --rate), add_arguments
             adds it, with the same meaning.

Out: multilabel records, label_names = the sorted labels that occur; record_id = ecg_id,
patient_id = patient_id; the official split strat_fold 1-8 train, 9 val, 10 test. Records with no
label of the chosen set are left out (``excluded``), as the benchmark leaves them out.
``read`` returns the WFDB record as stored: (12, T) in the header's units (mV), leads named as
the header names them (I ... AVR, AVL, AVF, V1-V6).

``read_wfdb_signal`` is shared with the other WFDB sources (MIMIC-IV-ECG, the Challenge sets).
"""
from __future__ import annotations

import argparse
import ast
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from datasets.sources import BadRecord, RecordRef, Signal
from util.errors import ConfigError

__all__ = ["PTBXLSource", "read_wfdb_signal", "wfdb_failure_reason", "error_reason", "LABEL_SETS"]

LABEL_SETS = ("all", "diagnostic", "subdiagnostic", "superdiagnostic", "form", "rhythm")
DATABASE_COLUMNS = ("ecg_id", "patient_id", "age", "sex", "scp_codes", "strat_fold", "filename_lr", "filename_hr")


def error_reason(error: Exception) -> str:
    """An exception as a one-line reason for BadRecord / index_problems ("ValueError: ...")."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def wfdb_failure_reason(error: Exception) -> str:
    """What an exception of wfdb means for the record, the case first (the ingest report groups by it)."""
    if isinstance(error, FileNotFoundError):
        return f"missing file {os.path.basename(str(error.filename or '')) or '(unknown)'}"
    if type(error).__name__ == "HeaderSyntaxError":
        return f"unreadable header ({error_reason(error)})"
    if isinstance(error, ValueError) and "not loaded correctly" in str(error):
        return "the signal file is shorter than the header says (truncated)"  # wfdb's words for it
    return f"unreadable WFDB record ({error_reason(error)})"


# bytes per sample of the WFDB storage formats (signal files hold sig_len frames of all their signals)
_FORMAT_BYTES = {"8": 1, "16": 2, "61": 2, "80": 1, "160": 2, "212": 1.5, "310": 4 / 3, "311": 4 / 3, "24": 3, "32": 4}


def _check_file_sizes(header, folder: str) -> None:
    """``BadRecord`` when a signal file is shorter than its header says (a truncated download): wfdb
    itself fails on it with whatever error the cut happens to cause."""
    if not header.sig_len or not header.file_name:
        return
    frame_bytes: dict = {}
    for name, fmt in zip(header.file_name, header.fmt or []):
        if fmt not in _FORMAT_BYTES:
            return  # a format we do not size: leave it to wfdb
        frame_bytes[name] = frame_bytes.get(name, 0) + _FORMAT_BYTES[fmt]
    offsets = dict(zip(header.file_name, header.byte_offset or [None] * len(header.file_name)))
    for name, per_frame in frame_bytes.items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise BadRecord(f"missing file {name}")
        expected = int(header.sig_len * per_frame) + int(offsets.get(name) or 0)
        size = os.path.getsize(path)
        if size < expected:
            raise BadRecord(f"the signal file is shorter than the header says (truncated): {name} has {size} "
                            f"of {expected} bytes")


def read_wfdb_signal(record: str) -> Signal:
    """One WFDB record (path without extension) as a ``Signal`` in the header's units.

    Any failure (missing or truncated signal file, a header that does not parse, mixed units,
    missing samples) raises ``BadRecord`` with a short reason.
    """
    import wfdb  # imported here: workers import it once, index() never needs it

    try:
        samples, fields = wfdb.rdsamp(record)
    except Exception as e:  # wfdb raises many types; the reason says which case before any detail
        reason = wfdb_failure_reason(e)
        try:  # a truncated signal file fails with whatever error the cut causes: say so instead
            _check_file_sizes(wfdb.rdheader(record), os.path.dirname(record))
        except BadRecord as truncated:
            reason = str(truncated)
        except Exception:  # noqa: BLE001 - the header is unreadable too: the first reason stands
            pass
        raise BadRecord(reason) from None
    if samples is None or samples.ndim != 2 or samples.shape[1] == 0:
        raise BadRecord("the WFDB record holds no signals")
    if fields.get("sig_len") and samples.shape[0] != fields["sig_len"]:
        raise BadRecord(f"the signal file holds {samples.shape[0]} samples, the header says {fields['sig_len']}")
    units = {str(u).strip() for u in fields.get("units") or []}
    if len(units) != 1:
        raise BadRecord(f"the leads have different amplitude units ({', '.join(sorted(units)) or 'none'})")
    missing = int(np.isnan(samples).sum())
    if missing:  # WFDB marks missing samples with a reserved value; rdsamp turns them into NaN
        raise BadRecord(f"{missing} samples are missing (NaN) in the WFDB record")
    return Signal(data=np.ascontiguousarray(samples.T, dtype=np.float64), sampling_rate=float(fields["fs"]),
                  lead_names=[str(n) for n in fields["sig_name"]], units=units.pop())


def _json_value(value):
    """A CSV cell as JSON-able extra: NaN -> None, numpy scalars -> Python."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


class PTBXLSource:
    """PTB-XL 12-lead ECGs (WFDB, 500 or 100 Hz) with the PTB-XL benchmark's SCP-statement label sets."""

    name = "ptbxl"
    modality = "ecg"
    provenance = ("PTB-XL 1.0.3 (Wagner et al. 2020, Sci Data 7:154), https://physionet.org/content/ptb-xl/ "
                  "(CC BY 4.0); labels: the SCP-ECG statement sets of Strodthoff et al. 2020")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--labels", choices=LABEL_SETS, default="superdiagnostic",
                            help="label set of the PTB-XL benchmark (default: superdiagnostic, the 5 classes)")
        try:
            parser.add_argument("--rate", type=float, default=500.0,
                                help="sampling rate in Hz: 100 or less reads records100, otherwise records500")
        except argparse.ArgumentError:  # the ingest's own --rate (every ECG source has it): the same meaning
            pass

    def __init__(self, raw: Path, options: argparse.Namespace) -> None:
        self.raw = Path(raw)
        self.labels = getattr(options, "labels", "superdiagnostic")
        rate = getattr(options, "rate", None)
        # the 100 Hz files serve a store at 100 Hz or less; anything else is made from the 500 Hz ones
        self.file_column = "filename_lr" if rate is not None and float(rate) <= 100 else "filename_hr"
        if self.labels not in LABEL_SETS:
            raise ConfigError(f"ptbxl: --labels {self.labels!r} is not one of {', '.join(LABEL_SETS)}")
        self.index_problems: list[tuple[str, str]] = []
        self.excluded: dict[str, int] = {}
        self.task_type = "multilabel"
        self.label_names: list[str] = []

    # ------------------------------------------------------------------------------------------

    def _csv(self, name: str, **kwargs) -> pd.DataFrame:
        path = self.raw / name
        if not path.is_file():
            raise ConfigError(f"ptbxl: {path} not found; --raw must be the PTB-XL folder "
                              "(ptbxl_database.csv, scp_statements.csv, records500/, records100/)")
        return pd.read_csv(path, **kwargs)

    def _statement_map(self) -> dict[str, str] | None:
        """statement code -> label, for the statements that count in the chosen label set
        (None for ``all``: every key of scp_codes is a label, listed in scp_statements.csv or not)."""
        table = self._csv("scp_statements.csv", index_col=0)
        missing = [c for c in ("diagnostic", "form", "rhythm", "diagnostic_class", "diagnostic_subclass")
                   if c not in table.columns]
        if missing:
            raise ConfigError(f"ptbxl: {self.raw / 'scp_statements.csv'} lacks the columns {', '.join(missing)}")
        table.index = table.index.astype(str).str.strip()
        if self.labels == "all":
            return None
        if self.labels in ("form", "rhythm"):
            keep = table[pd.to_numeric(table[self.labels], errors="coerce") == 1.0]
            return {code: code for code in keep.index}
        diagnostic = table[pd.to_numeric(table["diagnostic"], errors="coerce") == 1.0]
        if self.labels == "diagnostic":
            return {code: code for code in diagnostic.index}
        column = "diagnostic_subclass" if self.labels == "subdiagnostic" else "diagnostic_class"
        return {code: str(target).strip() for code, target in diagnostic[column].items()
                if isinstance(target, str) and target.strip()}

    def index(self) -> list[RecordRef]:
        self.index_problems, self.excluded = [], {}
        statements = self._statement_map()
        table = self._csv("ptbxl_database.csv")
        missing = [c for c in DATABASE_COLUMNS if c not in table.columns]
        if missing:
            raise ConfigError(f"ptbxl: {self.raw / 'ptbxl_database.csv'} lacks the columns {', '.join(missing)}")
        table = table[list(DATABASE_COLUMNS)]
        file_column = self.file_column
        refs, unlabelled = [], 0
        for row in table.itertuples(index=False):
            try:
                record_id = str(int(row.ecg_id))
            except (TypeError, ValueError):
                self.index_problems.append((str(row.ecg_id), "ecg_id is not a number"))
                continue
            try:
                codes = ast.literal_eval(row.scp_codes)
                if not isinstance(codes, dict):
                    raise ValueError("not a dict")
            except (ValueError, SyntaxError, TypeError):
                self.index_problems.append((record_id, f"scp_codes {str(row.scp_codes)[:60]!r} is not a dict"))
                continue
            try:
                patient = str(int(float(row.patient_id)))
                fold = int(float(row.strat_fold))
            except (TypeError, ValueError):
                self.index_problems.append((record_id, "patient_id or strat_fold is missing"))
                continue
            if not 1 <= fold <= 10:
                self.index_problems.append((record_id, f"strat_fold {fold} is not 1-10"))
                continue
            filename = getattr(row, file_column)
            if not isinstance(filename, str) or not filename.strip():
                self.index_problems.append((record_id, f"{file_column} is empty"))
                continue
            keys = [str(code).strip() for code in codes]
            labels = sorted(set(keys) if statements is None else {statements[c] for c in keys if c in statements})
            if not labels:
                unlabelled += 1
                continue
            refs.append(RecordRef(
                record_id=record_id, patient_id=patient, labels=labels,
                split="train" if fold <= 8 else "val" if fold == 9 else "test",
                location=str(self.raw / filename.strip()),
                extra={"age": _json_value(row.age), "sex": _json_value(row.sex), "strat_fold": fold,
                       "scp_codes": {str(k): _json_value(v) for k, v in codes.items()}}))
        if unlabelled:
            self.excluded[f"no statement of the {self.labels} label set"] = unlabelled
        seen, unique = set(), []
        for ref in refs:
            if ref.record_id in seen:
                self.index_problems.append((ref.record_id, "ecg_id appears more than once"))
                continue
            seen.add(ref.record_id)
            unique.append(ref)
        self.label_names = sorted({label for ref in unique for label in ref.labels})
        return sorted(unique, key=lambda ref: ref.record_id)

    def read(self, ref: RecordRef) -> Signal:
        return read_wfdb_signal(ref.location)
