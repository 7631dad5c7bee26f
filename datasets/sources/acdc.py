"""ACDC: the Automated Cardiac Diagnosis Challenge cine short-axis CMR dataset (Bernard et al. 2018).

Raw layout (the unzipped download; ``--raw`` may name ``database/`` or the folder holding it)::

    training/patient001/Info.cfg                  "ED: 1", "ES: 12", "Group: DCM", "Height: 184.0",
                                                   "NbFrame: 30", "Weight: 95.0" (one "Key: value" a line)
    training/patient001/patient001_frame01.nii.gz  the ED frame, H x W x slices
    training/patient001/patient001_frame12.nii.gz  the ES frame
    training/patient001/patient001_4d.nii.gz       the whole cine (not read)
    training/patient001/patient001_frame01_gt.nii.gz  segmentations (not read)
    testing/patient101/...                          the official test set (RecordRef.split "test")

Either of training/ and testing/ may be missing.

Options:
    --frames ed|es|both   which cardiac phase(s) become records (default ed)
    --slices mid|all      the middle short-axis slice (index slices // 2) or every slice (default mid)
    --labels group|none   multiclass diagnosis NOR, MINF, DCM, HCM, RV, or unlabelled (default group)

What comes out: one record per (patient, phase, slice), record_id ``patient001_ed_s05``, patient_id
``patient001``; ``read`` returns that slice as an (H, W) float32 array (NIfTI axes i, j: the store
resizes, orientation is left as the file has it) with the header's in-plane voxel size in mm.
index() reads Info.cfg files and NIfTI headers only; voxel data is read in ``read``.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import nibabel as nib
import numpy as np

from datasets.sources import BadRecord, Image, RecordRef

GROUPS = ["NOR", "MINF", "DCM", "HCM", "RV"]
PHASES = {"ed": "ED", "es": "ES"}  # our phase name -> its Info.cfg key
DEFAULTS = {"frames": "ed", "slices": "mid", "labels": "group"}
CHOICES = {"frames": ("ed", "es", "both"), "slices": ("mid", "all"), "labels": ("group", "none")}
# NIfTI xyzt_units -> mm; "unknown" is taken as mm (what ACDC's headers say anyway)
_TO_MM = {"mm": 1.0, "meter": 1000.0, "micron": 0.001, "unknown": 1.0}


def parse_info(path: Path) -> dict:
    """Info.cfg as {key: value string}; lines without a colon are skipped."""
    fields = {}
    for line in path.read_text(encoding="utf-8", errors="strict").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _frame_file(folder: Path, patient: str, frame: int):
    """The frame's volume (.nii.gz, or an uncompressed .nii), or None."""
    for suffix in (".nii.gz", ".nii"):
        candidate = folder / f"{patient}_frame{frame:02d}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class ACDCSource:
    """ACDC cine short-axis CMR (NIfTI): ED/ES slices, diagnosis group labels, official test set."""
    name = "acdc"
    modality = "cmr"
    provenance = ("ACDC, Automated Cardiac Diagnosis Challenge (Bernard et al., IEEE TMI 37(11) 2018, "
                  "doi:10.1109/TMI.2018.2837502): 150 cine short-axis CMR exams, University Hospital of "
                  "Dijon, NIfTI; https://www.creatis.insa-lyon.fr/Challenge/acdc/ (database terms; "
                  "citing the paper is mandatory)")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--frames", choices=CHOICES["frames"], default=DEFAULTS["frames"],
                            help="cardiac phase(s) to ingest: end-diastole, end-systole or both")
        parser.add_argument("--slices", choices=CHOICES["slices"], default=DEFAULTS["slices"],
                            help="the middle short-axis slice or every slice")
        parser.add_argument("--labels", choices=CHOICES["labels"], default=DEFAULTS["labels"],
                            help="group: diagnosis (NOR, MINF, DCM, HCM, RV) as a multiclass label")

    def __init__(self, raw: Path, options: argparse.Namespace):
        raw = Path(raw)
        # the download unzips into database/; accept the folder above it too
        if not (raw / "training").is_dir() and not (raw / "testing").is_dir() and (raw / "database").is_dir():
            raw = raw / "database"
        self.raw = raw
        for key, default in DEFAULTS.items():
            value = getattr(options, key, None) or default
            if value not in CHOICES[key]:
                raise ValueError(f"acdc: --{key} must be one of {', '.join(CHOICES[key])}, not {value!r}")
            setattr(self, key, value)
        self.index_problems: list = []
        self.excluded: dict = {}
        self.task_type = "multiclass" if self.labels == "group" else None
        self.label_names = list(GROUPS) if self.labels == "group" else []

    def index(self) -> list:
        self.index_problems = []
        refs, seen = [], {}
        for part, split in (("training", None), ("testing", "test")):
            folder = self.raw / part
            if not folder.is_dir():
                continue
            patient_dirs = [p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"patient\d+", p.name)]
            for patient_dir in sorted(patient_dirs):
                patient = patient_dir.name
                if patient in seen:  # record ids would collide
                    self.index_problems.append((patient, f"{part}/{patient} repeats {seen[patient]}/{patient}"))
                    continue
                seen[patient] = part
                refs += self._patient_records(patient_dir, split)
        if not refs and not self.index_problems:
            raise FileNotFoundError(f"acdc: no training/patientNNN or testing/patientNNN folders under {self.raw}")
        return sorted(refs, key=lambda r: r.record_id)

    def _patient_records(self, folder: Path, split) -> list:
        patient = folder.name
        try:
            info = parse_info(folder / "Info.cfg")
        except (OSError, UnicodeDecodeError) as e:
            self.index_problems.append((patient, f"Info.cfg unreadable: {e}"))
            return []
        group = info.get("Group")
        if self.labels == "group":
            if not group:
                self.index_problems.append((patient, "Info.cfg has no Group (the diagnosis label)"))
                return []
            if group not in GROUPS:
                self.index_problems.append((patient, f"unknown Group {group!r} (known: {', '.join(GROUPS)})"))
                return []
        extra = {"group": group, "height_cm": _number(info.get("Height")),
                 "weight_kg": _number(info.get("Weight")), "nb_frames": info.get("NbFrame")}
        phases = ["ed", "es"] if self.frames == "both" else [self.frames]
        refs = []
        for phase in phases:
            refs += self._phase_records(folder, info, phase, split, group, extra)
        return refs

    def _phase_records(self, folder, info, phase, split, group, extra) -> list:
        patient, key = folder.name, PHASES[phase]
        problem_id = f"{patient}_{phase}"  # before the slice is known
        try:
            frame = int(info[key])
        except KeyError:
            self.index_problems.append((problem_id, f"Info.cfg has no {key} (the {key} frame number)"))
            return []
        except ValueError:
            self.index_problems.append((problem_id, f"Info.cfg {key}: {info[key]!r} is not a frame number"))
            return []
        path = _frame_file(folder, patient, frame)
        if path is None:
            self.index_problems.append((problem_id, f"{patient}_frame{frame:02d}.nii.gz ({key} frame) is missing"))
            return []
        try:
            shape = nib.load(path).shape  # header only: the voxels stay on disk
        except Exception as e:  # nibabel raises several types for a damaged header
            self.index_problems.append((problem_id, f"{path.name}: unreadable NIfTI header: {e}"))
            return []
        if len(shape) != 3 or min(shape) < 1:
            self.index_problems.append((problem_id, f"{path.name}: expected H x W x slices, header says {shape}"))
            return []
        n_slices = shape[2]
        slices = range(n_slices) if self.slices == "all" else [n_slices // 2]
        return [RecordRef(record_id=f"{patient}_{phase}_s{k:02d}", patient_id=patient,
                          labels=group if self.labels == "group" else None, split=split,
                          location=(str(path), k),
                          extra={**extra, "phase": phase, "frame": frame, "slice": k, "n_slices": n_slices})
                for k in slices]

    def read(self, ref: RecordRef) -> Image:
        path, k = ref.location
        try:
            image = nib.load(path)
            volume = image.get_fdata(dtype=np.float32)  # whole volume: a truncated file fails here
            zooms = image.header.get_zooms()
            unit = image.header.get_xyzt_units()[0]
        except FileNotFoundError:
            raise BadRecord(f"{Path(path).name} is missing")
        except Exception as e:  # EOFError, zlib / gzip errors, ImageFileError, ValueError ...
            raise BadRecord(f"{Path(path).name}: unreadable NIfTI data ({type(e).__name__}: {e})")
        if volume.ndim != 3:
            raise BadRecord(f"{Path(path).name}: expected H x W x slices, found shape {volume.shape}")
        if not 0 <= k < volume.shape[2]:
            raise BadRecord(f"{Path(path).name}: slice {k} out of range (the volume has {volume.shape[2]})")
        data = np.ascontiguousarray(volume[:, :, k])
        if not np.isfinite(data).all():
            raise BadRecord(f"{Path(path).name}: slice {k} has non-finite values")
        scale = _TO_MM.get(unit, 1.0)
        extra = ref.extra
        note = (f"{extra.get('phase', '?').upper()} frame {extra.get('frame', '?')}, "
                f"slice {k + 1} of {volume.shape[2]}")
        return Image(data=data, pixel_spacing=(float(zooms[0]) * scale, float(zooms[1]) * scale), note=note)
