"""Records shared between two stores (or two splits): the leak a pretraining corpus and a downstream
test set must not have.

    python -m datasets.check_overlap data/mimic data/ptbxl                  # every record of each
    python -m datasets.check_overlap data/mimic:train data/mimic_af:test    # STORE:SPLIT

Three kinds of overlap are looked for, each with a count and examples:

- **record ids**: the same id in both (a store ingested from part of the other's raw data);
- **patients**: the same person in both (``patient_ids.txt``; the only check that sees two ECGs
  of one patient taken on different days);
- **content**: records with identical stored values (``content_hashes.txt``), whatever their
  ids: the same file ingested twice under two names, or shipped in two datasets (stores of one
  contract only: the same ECG resampled differently has other values).

Exit status 0: no overlap; 1: some (the report says what); 2: a store could not be read.
Fine-tuning runs ``warn_pretraining_overlap`` on the encoder it starts from: the encoder file
names the store and split it was pretrained on.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from datasets.loading import train_subset
from datasets.store import Store
from util.errors import StoreError

log = logging.getLogger(__name__)

EXAMPLES = 5


@dataclass
class Records:
    """The records of one store split: ids, patients (None when unknown) and content hashes."""
    name: str
    ids: list
    patients: Optional[list]
    hashes: Optional[list] = None
    source: Optional[str] = None  # the raw dataset it was ingested from: ids are that source's ids


@dataclass
class Overlap:
    """What two sets of records share; ``found`` is False when they share nothing."""
    records: list = field(default_factory=list)   # shared record ids
    patients: list = field(default_factory=list)  # shared patient ids
    content: list = field(default_factory=list)   # (id in a, id in b) pairs with identical values
    patients_known: bool = True

    @property
    def found(self) -> bool:
        return bool(self.records or self.patients or self.content)


def records_of(store: Store, split: Optional[str] = None, indices=None, with_hashes: bool = True) -> Records:
    """The records of ``split`` (or of ``indices``; None: every record) of ``store``."""
    rows = (np.arange(store.n) if split is None and indices is None
            else np.asarray(indices if indices is not None else store.split(split), dtype=np.int64))
    ids = [store.record_ids[i] for i in rows]
    patients = None
    if store.patient_ids is not None:
        patients = [store.patient_ids[i] for i in rows]
    hashes = None
    if with_hashes:
        every = store.content_hashes()
        hashes = [every[i] for i in rows]
    source = (store.info.get("ingest") or {}).get("source")
    return Records(f"{store.root}" + (f":{split}" if split else ""), ids, patients, hashes, source)


def same_namespace(a: Records, b: Records) -> bool:
    """Whether the record and patient ids of ``a`` and ``b`` name the same things: record 17 of
    PTB-XL and record 17 of CODE-15% are not one ECG, nor patient 17 one person. Stores ingested
    from different sources are compared by content only; stores of unknown origin by ids too."""
    return a.source is None or b.source is None or a.source == b.source


def overlap(a: Records, b: Records) -> Overlap:
    """Shared record ids, shared (known) patients and identical contents of ``a`` and ``b``."""
    ids_comparable = same_namespace(a, b)
    result = Overlap(records=sorted(set(a.ids) & set(b.ids)) if ids_comparable else [])
    if a.patients is None or b.patients is None or not ids_comparable:
        result.patients_known = False
    else:
        known = lambda ps: {p for p in ps if p}  # noqa: E731 - an empty id means unknown
        result.patients = sorted(known(a.patients) & known(b.patients))
    if a.hashes is not None and b.hashes is not None:
        first = {}
        for rid, h in zip(a.ids, a.hashes):
            first.setdefault(h, rid)
        result.content = [(first[h], rid) for rid, h in zip(b.ids, b.hashes)
                          if h in first and (first[h] != rid or not ids_comparable)]
    return result


def describe(result: Overlap, a: Records, b: Records) -> str:
    """A few lines saying what ``a`` and ``b`` share."""
    def some(items) -> str:
        shown = ", ".join(str(x) for x in items[:EXAMPLES])
        return shown + (f" and {len(items) - EXAMPLES} more" if len(items) > EXAMPLES else "")

    lines = [f"{a.name} ({len(a.ids)} records) vs {b.name} ({len(b.ids)} records):"]
    if not same_namespace(a, b):
        lines.append(f"  record and patient ids: not compared (sources {a.source} and {b.source} number them "
                     "independently)")
    else:
        lines.append(f"  shared record ids: {len(result.records)}" + (f" ({some(result.records)})" if result.records else ""))
        if result.patients_known:
            lines.append(f"  shared patients: {len(result.patients)}"
                         + (f" ({some(result.patients)})" if result.patients else ""))
        else:
            lines.append("  shared patients: unknown (a store has no patient_ids.txt)")
    if a.hashes is not None and b.hashes is not None:
        pairs = [f"{x}={y}" for x, y in result.content]
        lines.append(f"  identical records under other ids: {len(pairs)}" + (f" ({some(pairs)})" if pairs else ""))
    return "\n".join(lines)


def warn_pretraining_overlap(training_data: Optional[dict], splits: dict, encoder: str) -> Optional[Overlap]:
    """Warn when the records an encoder was pretrained on (its file's ``training_data``) share records
    or patients with the evaluation splits of this run (``DataInfo.splits``). Returns what the test
    split shares (None when it cannot be checked)."""
    if not training_data or not training_data.get("store") or not training_data.get("split"):
        log.info("the pretrained encoder '%s' does not record its training data: its overlap with the test split "
                 "is not checked (python -m datasets.check_overlap checks two stores)", encoder)
        return None
    try:
        store = Store(training_data["store"])
        rows = train_subset(store.split(training_data["split"]), training_data.get("train_fraction"),
                            seed=int(training_data.get("subset_seed") or 0))
        pretrained = records_of(store, indices=rows, with_hashes=False)
    except StoreError as e:
        log.info("cannot check the pretrained encoder's training data against this run's splits (%s)", e)
        return None
    pretrained.name = f"{training_data['store']}:{training_data['split']}"
    found = None
    for name in ("test", "val"):
        if name not in splits:
            continue
        target = splits[name]
        try:
            evaluated = records_of(Store(target["store"]), target["split"], with_hashes=False)
        except StoreError:
            continue
        result = overlap(pretrained, evaluated)
        if name == "test":
            found = result
        if result.found:
            log.warning("the pretrained encoder '%s' was trained on records this run evaluates on (its %s split); "
                        "its %s metrics are optimistic:\n%s", encoder, name, name,
                        describe(result, pretrained, evaluated))
    return found


def _parse(text: str) -> tuple[str, Optional[str]]:
    """``STORE`` or ``STORE:SPLIT`` (a path that exists as given is a store, colons and all)."""
    if os.path.isdir(text) or ":" not in text:
        return text, None
    root, _, split = text.rpartition(":")
    return root, split


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datasets.check_overlap", description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="a store folder, or STORE:SPLIT (e.g. data/mimic:train)")
    parser.add_argument("b", help="another store folder, or STORE:SPLIT (e.g. data/ptbxl:test)")
    parser.add_argument("--no-content", action="store_true", help="skip the comparison of stored values")
    options = parser.parse_args(argv)
    try:
        a, b = (records_of(Store(root), split, with_hashes=not options.no_content)
                for root, split in (_parse(options.a), _parse(options.b)))
    except StoreError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    result = overlap(a, b)
    print(describe(result, a, b))
    return 1 if result.found else 0


if __name__ == "__main__":
    sys.exit(main())
