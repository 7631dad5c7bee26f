"""UK Biobank resting 12-lead ECG (field 20205): GE CardioSoft XML, one file per exam.

Raw layout: the XML files UK Biobank delivers, anywhere below the raw folder, named
``<eid>_20205_<instance>_<array>.xml`` (instance 2 = first imaging visit, 3 = repeat imaging)::

    1234567_20205_2_0.xml
    bulk/7654321_20205_3_0.xml

The file (root ``<CardiologyXML>``) holds the 10 s rhythm strip in ``StripData``: ``SampleRate``
(Hz), ``Resolution`` (microvolts per unit, ``units="uVperLsb"``) and one ``WaveformData
lead="I"`` ... ``lead="V6"`` per lead as comma-separated integers; the machine's statements are
``Interpretation/Diagnosis/DiagnosisText`` lines. (The median beats and the full-disclosure
recording in the same file are not read.)

Options:
    --labels statements|none   the distinct diagnosis statements of each record (multilabel; the
                               vocabulary is the sorted set seen) or no labels (default statements)

What comes out: record_id the file stem (unique: a second file with the same stem goes to
``index_problems``), patient_id the stem's leading digits (the eid) when it has some, else the stem.
``read`` returns the strip as (12, T) float64 in microvolts at the file's rate, leads named as the
file names them. index() parses each file only up to the end of its ``Interpretation`` element,
before the waveforms.
"""
from __future__ import annotations

import argparse
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import NamedTuple

import numpy as np

from datasets.sources import BadRecord, RecordRef, Signal, files_by_stem

LABELS = ("statements", "none")
ROOT_TAG = "CardiologyXML"
# units="..." of <Resolution> -> the Signal's unit (CardioSoft writes uVperLsb)
_RESOLUTION_UNITS = {"uvperlsb": "uV", "mvperlsb": "mV", "": "uV"}


def _statement(text) -> str:
    return (text or "").strip()


def _is_statement(text: str) -> bool:
    """A real statement, not a separator line such as '---'."""
    return any(ch.isalnum() for ch in text)


class CardioSoftECG(NamedTuple):
    signal: Signal            # the rhythm strip, (leads, T) float64 in ``signal.units``
    statements: list          # every non-empty DiagnosisText, stripped, in file order
    resolution: float         # the file's Resolution (units per integer step, normally uV)


def read_cardiosoft_xml(path) -> CardioSoftECG:
    """The rhythm strip and diagnosis statements of a GE CardioSoft XML ECG.

    The strip is ``StripData``'s waveforms: the integers times ``Resolution`` (so microvolts), at
    ``SampleRate``, leads named as the file names them. Raises ``BadRecord`` for a file that
    cannot give a strip.
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise BadRecord(f"unreadable XML (truncated or damaged): {e}") from None
    strip = root.find("StripData")
    if strip is None:
        raise BadRecord(f"no <StripData> (root <{root.tag}>): not a CardioSoft resting ECG")
    try:
        rate = float(strip.findtext("SampleRate"))
        resolution_node = strip.find("Resolution")
        resolution = float(resolution_node.text)
    except (TypeError, ValueError, AttributeError):
        raise BadRecord("StripData lacks a numeric SampleRate or Resolution") from None
    units = _RESOLUTION_UNITS.get(resolution_node.get("units", "").strip().lower())
    if units is None:
        raise BadRecord(f"Resolution units {resolution_node.get('units')!r} not understood")
    names, leads = [], []
    for node in strip.findall("WaveformData"):
        try:
            values = np.array([float(v) for v in (node.text or "").replace("\n", "").split(",") if v.strip()])
        except ValueError:
            raise BadRecord(f"lead {node.get('lead')!r} has a non-numeric sample") from None
        names.append(node.get("lead", ""))
        leads.append(values * resolution)
    if not leads:
        raise BadRecord("StripData has no WaveformData")
    lengths = {len(v) for v in leads}
    if len(lengths) != 1 or 0 in lengths:
        raise BadRecord(f"the leads have lengths {sorted(lengths)}: the strip is incomplete")
    statements = [_statement(e.text) for e in root.iter("DiagnosisText") if _statement(e.text)]
    return CardioSoftECG(Signal(data=np.stack(leads), sampling_rate=rate, lead_names=names, units=units),
                         statements, resolution)


def _header_statements(path: Path) -> list[str]:
    """The DiagnosisText lines, parsing only up to the end of <Interpretation> (before the waveforms)."""
    statements, root = [], None
    for event, element in ET.iterparse(path, events=("start", "end")):
        if root is None:
            root = element.tag
            if root != ROOT_TAG:
                raise ValueError(f"root element <{root}>, not <{ROOT_TAG}>: not a CardioSoft ECG")
        if event == "end" and element.tag == "DiagnosisText" and _statement(element.text):
            statements.append(_statement(element.text))
        if (event == "end" and element.tag == "Interpretation") or (event == "start" and element.tag == "StripData"):
            break
    return statements


class UKBECGSource:
    name = "ukb_ecg"
    modality = "ecg"
    provenance = ("UK Biobank resting 12-lead ECG, field 20205 (GE CardioSoft XML, 10 s at 500 Hz); "
                  "https://biobank.ndph.ox.ac.uk/showcase/field.cgi?id=20205; access under an approved "
                  "UK Biobank application, not redistributable")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--labels", choices=LABELS, default="statements",
                            help="the machine's diagnosis statements (multilabel) or none (default statements)")

    def __init__(self, raw: Path, options: argparse.Namespace):
        self.raw = Path(raw)
        self.labels = getattr(options, "labels", None) or "statements"
        if self.labels not in LABELS:
            raise ValueError(f"ukb_ecg: --labels must be one of {', '.join(LABELS)}, not {self.labels!r}")
        self.index_problems: list = []
        self.excluded: dict = {}
        self.task_type = None
        self.label_names: list = []

    def index(self) -> list:
        self.index_problems, self.excluded = [], {}
        if not self.raw.is_dir():
            raise FileNotFoundError(f"ukb_ecg: {self.raw} is not a folder")
        refs, vocabulary = [], set()
        for path, rel, stem in files_by_stem(self.raw, ".xml", self.index_problems):
            try:
                statements = _header_statements(path)
            except (ET.ParseError, ValueError, OSError) as e:
                self.index_problems.append((stem, f"{rel}: unreadable header ({type(e).__name__}: {e})"))
                continue
            labels = None
            if self.labels == "statements":
                labels = sorted({s for s in statements if _is_statement(s)})
                vocabulary.update(labels)
            eid = re.match(r"\d+", stem)
            refs.append(RecordRef(record_id=stem, patient_id=eid.group(0) if eid else stem, labels=labels,
                                  location=str(path), extra={"file": rel}))
        if self.labels == "statements":
            self.task_type, self.label_names = "multilabel", sorted(vocabulary)
        return sorted(refs, key=lambda r: r.record_id)

    def read(self, ref: RecordRef) -> Signal:
        try:
            return read_cardiosoft_xml(ref.location).signal
        except OSError as e:
            raise BadRecord(f"cannot open {ref.location}: {e}") from None
