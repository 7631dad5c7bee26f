"""12-lead ECGs stored as DICOM waveforms (12-Lead ECG / General ECG IODs), read with pydicom.

Raw layout: any ``*.dcm`` file anywhere below the raw folder, one ECG per file::

    site_a/0001.dcm
    site_b/2021/ecg_0002.dcm

Each file's ``WaveformSequence`` holds one or more multiplex groups; the rhythm strip is the
longest group (the others are median beats). Amplitudes come from ``ds.waveform_array`` (channel
sensitivity, correction factor and baseline applied) in each channel's unit,
``ChannelSensitivityUnitsSequence`` (UCUM: uV, mV or V); leads are named by the channel's
``ChannelSourceSequence`` code meaning ("Lead I (Einthoven)", "Lead aVR", "V1", ...). The machine's
statements are the ``WaveformAnnotationSequence`` items with an ``UnformattedTextValue``.

Options:
    --labels statements|none   the distinct statements of each record (multilabel; the vocabulary
                               is the sorted set seen) or no labels (default statements)

What comes out: record_id the file stem (a second file with the same stem goes to
``index_problems``), patient_id the PatientID when the file has a real one (empty or anonymiser
placeholders such as "removed" count as absent: they would join unrelated people). ``read``
returns the rhythm strip as (channels, T) float64 at ``SamplingFrequency``, in the channels' common
unit, or converted to mV when the channels' units differ. index() reads the headers only; a DICOM
without a waveform (an image, a report) goes to ``index_problems``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import NamedTuple

import numpy as np

from datasets.sources import BadRecord, RecordRef, Signal, files_by_stem

LABELS = ("statements", "none")
_TO_MV = {"uV": 1e-3, "mV": 1.0, "V": 1e3}  # UCUM codes DICOM uses for ECG channel sensitivity
# PatientID values anonymisers write in place of the real one
_NO_PATIENT = {"", "removed", "anonymous", "anonymized", "anonymised", "unknown", "none", "n/a", "na"}


def _channel_name(channel, k: int) -> str:
    source = channel.get("ChannelSourceSequence")
    if source and "CodeMeaning" in source[0]:
        return str(source[0].CodeMeaning)
    return str(channel.get("ChannelLabel") or f"channel {k + 1}")


def _statements(ds) -> list[str]:
    return [str(item.UnformattedTextValue) for item in ds.get("WaveformAnnotationSequence", [])
            if "UnformattedTextValue" in item]


class DicomECG(NamedTuple):
    signal: Signal            # the rhythm strip, (channels, T) float64 in ``signal.units``
    statements: list          # the UnformattedTextValue of each annotation, in file order
    channel_units: list       # each channel's unit as the file gives it (uV, mV or V)


def read_dicom_ecg(path) -> DicomECG:
    """The rhythm strip and annotation statements of a DICOM ECG; ``BadRecord`` when it has no strip."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as e:  # noqa: BLE001 - pydicom raises many types for damaged files
        raise BadRecord(f"unreadable DICOM ({type(e).__name__}: {e})") from None
    waves = ds.get("WaveformSequence")
    if not waves:
        raise BadRecord(f"no WaveformSequence: not a waveform DICOM (Modality {ds.get('Modality', '?')})")
    group = max(range(len(waves)), key=lambda i: int(waves[i].get("NumberOfWaveformSamples", 0)))
    wave = waves[group]  # the rhythm strip (the longest group), not the median beat
    try:
        data = ds.waveform_array(group)  # (samples, channels), sensitivity applied
        rate = float(wave.SamplingFrequency)
    except Exception as e:  # noqa: BLE001 - truncated or inconsistent waveform data
        raise BadRecord(f"waveform group {group} unreadable ({type(e).__name__}: {e})") from None
    names, units = [], []
    for k, channel in enumerate(wave.ChannelDefinitionSequence):
        names.append(_channel_name(channel, k))
        unit_item = channel.get("ChannelSensitivityUnitsSequence")
        unit = str(unit_item[0].CodeValue) if unit_item and "CodeValue" in unit_item[0] else None
        if unit not in _TO_MV:
            raise BadRecord(f"channel {names[-1]!r}: amplitude unit {unit!r} not understood (known: uV, mV, V)")
        units.append(unit)
    if data.ndim != 2 or data.shape[1] != len(names):
        raise BadRecord(f"waveform data of shape {data.shape} for {len(names)} channel definitions")
    x = data.T
    if len(set(units)) == 1:
        signal = Signal(data=x, sampling_rate=rate, lead_names=names, units=units[0])
    else:  # one Signal has one unit: bring mixed channels to mV
        factors = np.array([_TO_MV[u] for u in units])[:, None]
        signal = Signal(data=x * factors, sampling_rate=rate, lead_names=names, units="mV")
    return DicomECG(signal, _statements(ds), units)


class DicomECGSource:
    name = "dicom_ecg"
    modality = "ecg"
    provenance = ("12-lead ECGs as DICOM waveforms (DICOM PS3.3 A.34, 12-Lead ECG IOD), from the raw "
                  "folder given; their origin and licence are those of that collection")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--labels", choices=LABELS, default="statements",
                            help="the annotation statements (multilabel) or none (default statements)")

    def __init__(self, raw: Path, options: argparse.Namespace):
        self.raw = Path(raw)
        self.labels = getattr(options, "labels", None) or "statements"
        if self.labels not in LABELS:
            raise ValueError(f"dicom_ecg: --labels must be one of {', '.join(LABELS)}, not {self.labels!r}")
        self.index_problems: list = []
        self.excluded: dict = {}
        self.task_type = None
        self.label_names: list = []

    def index(self) -> list:
        import pydicom

        self.index_problems, self.excluded = [], {}
        if not self.raw.is_dir():
            raise FileNotFoundError(f"dicom_ecg: {self.raw} is not a folder")
        refs, vocabulary = [], set()
        for path, rel, stem in files_by_stem(self.raw, ".dcm", self.index_problems):
            try:  # large values (the samples) are left unread
                ds = pydicom.dcmread(path, stop_before_pixels=True, defer_size="64 KB")
                has_waveform = bool(ds.get("WaveformSequence"))
            except Exception as e:  # noqa: BLE001 - pydicom raises many types for damaged files
                self.index_problems.append((stem, f"{rel}: unreadable DICOM header ({type(e).__name__}: {e})"))
                continue
            if not has_waveform:
                self.index_problems.append((stem, f"{rel}: no WaveformSequence, not a waveform DICOM "
                                                  f"(Modality {ds.get('Modality', '?')})"))
                continue
            patient = str(ds.get("PatientID", "") or "").strip()
            labels = None
            if self.labels == "statements":
                labels = sorted({s.strip() for s in _statements(ds) if s.strip()})
                vocabulary.update(labels)
            refs.append(RecordRef(record_id=stem, patient_id=None if patient.lower() in _NO_PATIENT else patient,
                                  labels=labels, location=str(path), extra={"file": rel}))
        if self.labels == "statements":
            self.task_type, self.label_names = "multilabel", sorted(vocabulary)
        return sorted(refs, key=lambda r: r.record_id)

    def read(self, ref: RecordRef) -> Signal:
        return read_dicom_ecg(ref.location).signal
