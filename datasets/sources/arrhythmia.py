"""Chapman-Shaoxing and Ningbo 12-lead ECGs as the PhysioNet/CinC Challenge 2020/2021 ships them.

Raw layout: ``<id>.hea`` + ``<id>.mat`` pairs anywhere below the raw folder (searched recursively,
e.g. ``WFDB_ChapmanShaoxing/JS00001.hea`` and ``WFDB_Ningbo/JS10647.hea``). A header is a WFDB
header whose signal lines name the .mat file, e.g. ``JS00001.mat 16+24 1000/mV 16 0 -254 21756 0 I``
(format 16 at byte offset 24: the int16 matrix ``val`` of a MATLAB v4 file, leads x samples, in ADC
units), followed by comment lines ``#Age: 85``, ``#Sex: Male``, ``#Dx: 164889003,59118001`` (the
record's SNOMED-CT diagnosis codes).

Options:

    --labels abbreviation | name   label naming (default abbreviation: "AF"; name: "atrial fibrillation")
    --unknown-codes keep | drop    a #Dx code missing from snomed_ct.csv becomes the label
                                   "SNOMED <code>" (keep, default) or is dropped; either way
                                   ``unknown_codes`` counts it ({code: records})

Codes are mapped through ``snomed_ct.csv`` next to this module: the 94 codes of the Challenge 2021
dx mapping files (scored and unscored) that occur in Chapman-Shaoxing or Ningbo (the file's comment
says where it comes from). Codes the Challenge scores as one diagnosis (e.g. 59118001 / 713427006)
stay distinct labels here; merging them is the experiment's choice.

Out: multilabel records, label_names sorted; record_id = the file name without extension,
patient_id = record_id (the sets publish no patient ids), no official split; extra holds age, sex,
the raw Dx codes and the folder the record is in. A header without a usable #Dx line goes to
``index_problems``; a record left without labels (--unknown-codes drop) is counted in ``excluded``.
``read`` returns (leads, T) in the header's units (mV): (value - baseline) / gain per lead, at the
header's rate (500 Hz in both sets), leads named as the header names them.
"""
from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path

import numpy as np
import pandas as pd

from datasets.sources import BadRecord, RecordRef, Signal
from datasets.sources.ptbxl import error_reason, read_wfdb_signal, wfdb_failure_reason
from util.errors import ConfigError

__all__ = ["ArrhythmiaSource", "snomed_table"]

SNOMED_CSV = Path(__file__).with_name("snomed_ct.csv")
NAMINGS = ("abbreviation", "name")
UNKNOWN = ("keep", "drop")
_V4_INT16 = 30  # MATLAB v4 MOPT of a little-endian full int16 matrix (M=0, O=0, P=3, T=0)


@functools.lru_cache(maxsize=1)
def snomed_table() -> pd.DataFrame:
    """The shipped mapping, indexed by code (a string of digits)."""
    table = pd.read_csv(SNOMED_CSV, comment="#", dtype=str)
    return table.assign(code=table.code.str.strip()).set_index("code")


def _header_comments(path: Path) -> dict[str, str]:
    """The ``#Key: value`` comment lines of a header, keys lower-cased (plain text: index() reads
    tens of thousands of headers and needs only these lines)."""
    comments = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if line.startswith("#"):
                key, sep, value = line[1:].partition(":")
                if sep:
                    comments[key.strip().lower()] = value.strip()
    return comments


def _mat_v4_layout(path: Path):
    """(MOPT, rows, columns, data offset) of a MATLAB v4 file, or None when it is not one."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20:
        return None
    mopt, rows, cols, imag, namlen = np.frombuffer(head, dtype="<i4").tolist()
    if not (0 <= mopt < 5000 and rows >= 0 and cols >= 0 and imag in (0, 1) and 0 < namlen < 64):
        return None
    return mopt, rows, cols, 20 + namlen


class ArrhythmiaSource:
    """Chapman-Shaoxing / Ningbo 12-lead ECGs in the Challenge 2020/2021 WFDB layout, SNOMED-CT labels."""

    name = "arrhythmia"
    modality = "ecg"
    provenance = ("Chapman-Shaoxing (Zheng et al. 2020, Sci Data 7:48) and Ningbo (Zheng et al. 2020, Sci Data 7:98) "
                  "12-lead ECGs in the PhysioNet/CinC Challenge 2021 WFDB release, "
                  "https://physionet.org/content/challenge-2021/ (CC BY 4.0); SNOMED-CT labels")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--labels", choices=NAMINGS, default="abbreviation",
                            help="label naming: the Challenge abbreviation (default) or the diagnosis name")
        parser.add_argument("--unknown-codes", choices=UNKNOWN, default="keep",
                            help="a #Dx code not in snomed_ct.csv: keep it as 'SNOMED <code>' (default) or drop it")

    def __init__(self, raw: Path, options: argparse.Namespace) -> None:
        self.raw = Path(raw)
        self.naming = getattr(options, "labels", "abbreviation")
        self.unknown_policy = getattr(options, "unknown_codes", "keep")
        if self.naming not in NAMINGS:
            raise ConfigError(f"arrhythmia: --labels {self.naming!r} is not one of {', '.join(NAMINGS)}")
        if self.unknown_policy not in UNKNOWN:
            raise ConfigError(f"arrhythmia: --unknown-codes {self.unknown_policy!r} is not keep or drop")
        self.index_problems: list[tuple[str, str]] = []
        self.excluded: dict[str, int] = {}
        self.unknown_codes: dict[str, int] = {}
        self.task_type = "multilabel"
        self.label_names: list[str] = []
        self._names: dict[str, str] = snomed_table()[self.naming].to_dict()

    def _label(self, code: str):
        if code in self._names:
            return self._names[code]
        self.unknown_codes[code] = self.unknown_codes.get(code, 0) + 1
        return f"SNOMED {code}" if self.unknown_policy == "keep" else None

    def index(self) -> list[RecordRef]:
        if not self.raw.is_dir():
            raise ConfigError(f"arrhythmia: {self.raw} is not a folder; --raw must hold the Challenge .hea/.mat files")
        self.index_problems, self.excluded, self.unknown_codes = [], {}, {}
        headers = sorted(self.raw.rglob("*.hea"))
        if not headers:
            raise ConfigError(f"arrhythmia: no .hea files below {self.raw}")
        refs: dict[str, RecordRef] = {}
        unlabelled = 0
        for header in headers:
            record_id = header.stem
            try:
                comments = _header_comments(header)
            except OSError as e:
                self.index_problems.append((record_id, f"header unreadable ({error_reason(e)})"))
                continue
            codes = list(dict.fromkeys(c.strip() for c in comments.get("dx", "").split(",") if c.strip()))
            if not codes:
                self.index_problems.append((record_id, "the header has no #Dx codes"))
                continue
            if record_id in refs:
                self.index_problems.append((record_id, f"{header} repeats a record id (kept {refs[record_id].location}.hea)"))
                continue
            labels = sorted({label for label in map(self._label, codes) if label is not None})
            if not labels:
                unlabelled += 1
                continue
            age = comments.get("age", "")
            refs[record_id] = RecordRef(
                record_id=record_id, patient_id=record_id, labels=labels, split=None,
                location=str(header.with_suffix("")),
                extra={"age": int(age) if age.isdigit() else None, "sex": comments.get("sex") or None,
                       "dx_codes": codes, "folder": os.path.relpath(header.parent, self.raw)})
        if unlabelled:
            self.excluded["only #Dx codes outside snomed_ct.csv (--unknown-codes drop)"] = unlabelled
        self.label_names = sorted({label for ref in refs.values() for label in ref.labels})
        return [refs[key] for key in sorted(refs)]

    def read(self, ref: RecordRef) -> Signal:
        import wfdb

        record = str(ref.location)
        try:
            header = wfdb.rdheader(record)
        except Exception as e:
            raise BadRecord(wfdb_failure_reason(e)) from None
        files = set(header.file_name or [])
        if not header.n_sig or not header.sig_len or len(files) != 1:
            raise BadRecord(f"the header describes {header.n_sig or 0} leads of {header.sig_len or 0} samples "
                            f"in {len(files)} files")
        mat = Path(record).parent / files.pop()
        if mat.suffix.lower() != ".mat":
            return read_wfdb_signal(record)
        if not mat.is_file():
            raise BadRecord(f"missing file {mat.name}")
        layout = _mat_v4_layout(mat)
        if layout is not None and layout[0] == _V4_INT16 and set(header.fmt) == {"16"} \
                and set(header.byte_offset or [None]) == {layout[3]}:
            # the layout wfdb reads directly: int16 frames right after the v4 header
            need = layout[3] + 2 * header.n_sig * header.sig_len
            if os.path.getsize(mat) < need:
                raise BadRecord(f"{mat.name} is truncated ({os.path.getsize(mat)} bytes, the header needs {need})")
            if (layout[1], layout[2]) != (header.n_sig, header.sig_len):
                raise BadRecord(f"{mat.name} holds {layout[1]} x {layout[2]}, the header says "
                                f"{header.n_sig} x {header.sig_len}")
            return read_wfdb_signal(record)
        return self._read_loadmat(mat, header)

    @staticmethod
    def _read_loadmat(mat: Path, header) -> Signal:
        """Any other .mat (v5, another dtype or offset): ``val`` through scipy, scaled as the header says."""
        from scipy.io import loadmat

        try:
            val = loadmat(str(mat), variable_names=["val"]).get("val")
        except Exception as e:
            raise BadRecord(f"{mat.name} unreadable ({error_reason(e)})") from None
        if val is None or np.shape(val) != (header.n_sig, header.sig_len):
            raise BadRecord(f"{mat.name} holds {'no val' if val is None else 'val ' + str(np.shape(val))}, "
                            f"the header says {header.n_sig} x {header.sig_len}")
        gain = np.asarray(header.adc_gain, dtype=np.float64)
        if np.any(gain == 0) or not np.all(np.isfinite(gain)):
            raise BadRecord("a lead has ADC gain 0 in the header")
        units = {str(u).strip() for u in header.units}
        if len(units) != 1:
            raise BadRecord(f"the leads have different amplitude units ({', '.join(sorted(units))})")
        data = (np.asarray(val, dtype=np.float64) - np.asarray(header.baseline, dtype=np.float64)[:, None]) / gain[:, None]
        if not np.all(np.isfinite(data)):
            raise BadRecord(f"{mat.name} holds NaN or inf values")
        return Signal(data=data, sampling_rate=float(header.fs), lead_names=[str(n) for n in header.sig_name],
                      units=units.pop())
