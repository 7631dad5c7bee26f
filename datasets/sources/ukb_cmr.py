"""UK Biobank short-axis cine CMR (field 20209, "Short axis heart images - DICOM"), unzipped.

Raw layout: one folder per subject-visit, named as the zip UK Biobank delivers (``<eid>_20209_2_0``:
eid, field, instance 2 = first imaging visit, 3 = repeat imaging), holding the DICOM files of the
short-axis stack (about 10 slices x 50 cardiac phases; each file one 2-D image), possibly in
sub-folders, plus manifest.csv (not read)::

    1234567_20209_2_0/*.dcm
    7654321_20209_3_0/CINE_segmented_SAX_b5/*.dcm

Files ending ``.dcm`` or without a suffix are taken as DICOM.

Slices: files are grouped by slice position, SliceLocation when every file of the folder has it,
otherwise ImagePositionPatient projected on the slice normal (the cross product of the two
ImageOrientationPatient directions); slices are ordered along that axis. A slice acquired twice
(two series at one position; UK Biobank's converter meets this too) keeps the series with the
highest SeriesNumber, the later acquisition; the other goes to ``excluded``. Frames: within a
slice, ordered by TriggerTime (time after the R wave), or InstanceNumber where TriggerTime is
missing; the first is end-diastole.

Options:
    --slices mid|all   the middle slice (index slices // 2, mid-ventricular) or every slice (default mid)
    --frames ed|all    the end-diastolic frame or every frame (default ed)
    --labels none      no labels (the only choice: the images are paired with ECGs by eid)

What comes out: record_id ``<folder>_s<k>_f<j>`` (slice k, frame j, 0-based, two digits),
patient_id the eid (the folder name's leading digits, else the folder name); ``read`` returns the
image as (rows, columns) float32 with RescaleSlope/Intercept applied, spacing from PixelSpacing.
index() reads DICOM headers only.
"""
from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import numpy as np
import pydicom

from datasets.sources import BadRecord, Image, RecordRef

DEFAULTS = {"slices": "mid", "frames": "ed", "labels": "none"}
CHOICES = {"slices": ("mid", "all"), "frames": ("ed", "all"), "labels": ("none",)}
# positions closer than this are one slice: SAX slices are ~10 mm apart, float noise is far below
SAME_SLICE_MM = 0.1
REPEATED = "earlier series of a slice acquired twice"


def _floats(value, n):
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(math.isfinite(v) for v in out) else None


def _float(value):
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _header(path: Path) -> dict:
    """The header fields this reader uses (pixel data not read)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    ipp, iop = _floats(ds.get("ImagePositionPatient"), 3), _floats(ds.get("ImageOrientationPatient"), 6)
    projected = None
    if ipp is not None and iop is not None:
        normal = np.cross(iop[:3], iop[3:])
        projected = float(np.dot(ipp, normal))
    series_number = _int(ds.get("SeriesNumber"))
    return {"rows": ds.get("Rows"), "slice_location": _float(ds.get("SliceLocation")),
            "projected": projected, "trigger_time": _float(ds.get("TriggerTime")),
            "instance": _int(ds.get("InstanceNumber")),
            "series_number": -1 if series_number is None else series_number,
            "series_uid": str(ds.get("SeriesInstanceUID", "")),
            "series_description": str(ds.get("SeriesDescription", ""))}


def _is_dicom_name(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in (".dcm", "")


def _group_positions(items: list) -> list:
    """[(position, item)] -> [[items of one slice]], slices in increasing position."""
    slices, last = [], None
    for position, item in sorted(items, key=lambda t: t[0]):
        if last is None or position - last > SAME_SLICE_MM:
            slices.append([])
        slices[-1].append((position, item))
        last = position
    return slices


class UKBCMRSource:
    """UK Biobank short-axis cine CMR (DICOM, field 20209): mid-ventricular ED slice per visit, no labels."""
    name = "ukb_cmr"
    modality = "cmr"
    provenance = ("UK Biobank imaging study, field 20209 (short-axis cine CMR, DICOM; protocol: Petersen "
                  "et al., JCMR 2016, doi:10.1186/s12968-016-0227-4); "
                  "https://biobank.ndph.ox.ac.uk/showcase/field.cgi?id=20209; access under an approved "
                  "UK Biobank application, not redistributable")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--slices", choices=CHOICES["slices"], default=DEFAULTS["slices"],
                            help="the mid-ventricular (middle) short-axis slice or every slice")
        parser.add_argument("--frames", choices=CHOICES["frames"], default=DEFAULTS["frames"],
                            help="the end-diastolic frame (smallest TriggerTime) or every frame")
        parser.add_argument("--labels", choices=CHOICES["labels"], default=DEFAULTS["labels"],
                            help="no labels: UK Biobank CMR is paired with ECG by eid")

    def __init__(self, raw: Path, options: argparse.Namespace):
        self.raw = Path(raw)
        for key, default in DEFAULTS.items():
            value = getattr(options, key, None) or default
            if value not in CHOICES[key]:
                raise ValueError(f"ukb_cmr: --{key} must be one of {', '.join(CHOICES[key])}, not {value!r}")
            setattr(self, key, value)
        self.index_problems: list = []
        self.excluded: dict = {}
        self.task_type = None
        self.label_names: list = []

    def index(self) -> list:
        self.index_problems, self.excluded = [], {}
        if not self.raw.is_dir():
            raise FileNotFoundError(f"ukb_cmr: {self.raw} is not a folder")
        folders = sorted(p for p in self.raw.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise FileNotFoundError(f"ukb_cmr: no subject-visit folders (e.g. 1234567_20209_2_0/) under {self.raw}")
        refs = []
        for folder in folders:
            refs += self._folder_records(folder)
        return sorted(refs, key=lambda r: r.record_id)

    def _folder_records(self, folder: Path) -> list:
        headers = {}
        for path in sorted(p for p in folder.rglob("*") if _is_dicom_name(p)):
            rel = path.relative_to(folder).as_posix()
            try:
                header = _header(path)
            except Exception as e:  # pydicom raises many types for damaged files
                self.index_problems.append((f"{folder.name}/{rel}",
                                            f"unreadable DICOM header ({type(e).__name__}: {e})"))
                continue
            if not header["rows"]:
                self.index_problems.append((f"{folder.name}/{rel}", "not an image (no Rows in the header)"))
                continue
            headers[path] = header
        if not headers:
            self.index_problems.append((folder.name, "no readable DICOM images in the folder"))
            return []

        # one position measure for the whole folder, so slices compare like with like
        key = "slice_location" if all(h["slice_location"] is not None for h in headers.values()) else "projected"
        placed = []
        for path, header in headers.items():
            if header[key] is None:
                self.index_problems.append((f"{folder.name}/{path.relative_to(folder).as_posix()}",
                                            "no slice position (neither SliceLocation nor "
                                            "ImagePositionPatient with ImageOrientationPatient)"))
            else:
                placed.append((header[key], (path, header)))
        slices = []
        for members in _group_positions(placed):
            frames = self._latest_series([item for _, item in members])
            ordered = self._ordered_frames(folder, frames, members[0][0])
            if ordered:
                slices.append((float(np.mean([p for p, _ in members])), ordered))
        if not slices:
            return []

        eid = re.match(r"\d+", folder.name)
        patient = eid.group(0) if eid else folder.name
        chosen = range(len(slices)) if self.slices == "all" else [len(slices) // 2]
        refs = []
        for k in chosen:
            position, ordered = slices[k]
            for j in (range(len(ordered)) if self.frames == "all" else [0]):
                path, header = ordered[j]
                refs.append(RecordRef(
                    record_id=f"{folder.name}_s{k:02d}_f{j:02d}", patient_id=patient, location=str(path),
                    extra={"folder": folder.name, "file": path.relative_to(folder).as_posix(),
                           "slice": k, "n_slices": len(slices), "slice_position_mm": round(position, 3),
                           "frame": j, "n_frames": len(ordered), "trigger_time_ms": header["trigger_time"],
                           "series_description": header["series_description"]}))
        return refs

    def _latest_series(self, items: list) -> list:
        """The files of the last-acquired series at this position (a repeat replaces the first try)."""
        series = {}
        for path, header in items:
            series.setdefault((header["series_number"], header["series_uid"]), []).append((path, header))
        keep = max(series)
        for other, files in series.items():
            if other != keep:  # count the records it would have given
                lost = len(files) if self.frames == "all" else 1
                self.excluded[REPEATED] = self.excluded.get(REPEATED, 0) + lost
        return series[keep]

    def _ordered_frames(self, folder: Path, items: list, position: float) -> list:
        """The slice's files in cardiac-cycle order (end-diastole first), or [] with a problem noted."""
        if all(h["trigger_time"] is not None for _, h in items):
            return sorted(items, key=lambda t: (t[1]["trigger_time"], t[1]["instance"] or 0, t[0].name))
        if all(h["instance"] is not None for _, h in items):
            return sorted(items, key=lambda t: (t[1]["instance"], t[0].name))
        self.index_problems.append((f"{folder.name}@{position:.1f}mm", "frames cannot be ordered: neither "
                                    "TriggerTime nor InstanceNumber on every file of the slice"))
        return []

    def read(self, ref: RecordRef) -> Image:
        path = Path(ref.location)
        try:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array
        except FileNotFoundError:
            raise BadRecord(f"{path.name} is missing")
        except Exception as e:  # InvalidDicomError, short pixel data (ValueError), no pixel data ...
            raise BadRecord(f"{path.name}: unreadable DICOM image ({type(e).__name__}: {e})")
        if pixels.ndim != 2:
            raise BadRecord(f"{path.name}: expected one 2-D image, found pixel data of shape {pixels.shape}")
        data = pixels.astype(np.float32)
        slope, intercept = _float(ds.get("RescaleSlope")), _float(ds.get("RescaleIntercept"))
        if slope is not None and slope != 1.0:
            data *= np.float32(slope)
        if intercept:
            data += np.float32(intercept)
        spacing = _floats(ds.get("PixelSpacing"), 2)
        extra = ref.extra
        note = (f"slice {extra.get('slice', 0) + 1} of {extra.get('n_slices', '?')}, "
                f"frame {extra.get('frame', 0) + 1} of {extra.get('n_frames', '?')}")
        if extra.get("trigger_time_ms") is not None:
            note += f" (trigger time {extra['trigger_time_ms']:g} ms)"
        return Image(data=data, pixel_spacing=spacing, note=note)
