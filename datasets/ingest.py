"""Ingest a raw dataset into a store: ``python -m datasets.ingest <source> --raw DIR --out DIR [options]``.

    python -m datasets.ingest ptbxl --raw ~/ptb-xl-1.0.3 --out data/ptbxl --labels superdiagnostic
    python -m datasets.ingest mimic_iv_ecg --raw ~/mimic-iv-ecg --out data/mimic --workers 16
    python -m datasets.ingest mimic_iv_ecg ... --shard 3/8        # one part, e.g. one SLURM array task
    python -m datasets.ingest merge --out data/mimic               # join the parts into the store

The sources are the readers of ``datasets/sources`` (``--help`` after a source name lists its own
options). Every source goes through the same steps:

1. **index**: the reader lists the records from the raw metadata (ids, patients, labels, official
   splits), cheaply; unusable metadata entries are reported, not fatal.
2. **read and prepare**, in ``--workers`` processes, in chunks of ``--chunk`` records: each record is
   brought to the preprocessing contract (``datasets.preprocess``: lead order, mV, ``--rate``,
   ``--seconds``, optional ``--baseline`` / ``--clip`` / ``--zscore``; images: ``--image-size``). A record
   that cannot be (truncated file, NaNs, missing leads, unreadable header ...) is skipped and listed
   with its reason; it never stops the ingest. Each finished chunk is written atomically to the work
   folder ``<out>.parts/``, so an interrupted ingest, rerun with the same command, continues from
   the chunks it has and ends with the same store as an uninterrupted one.
3. **write the store** (once every shard is done): records in id order, streamed chunk by chunk
   (memory stays flat at any N), labels, record and patient ids, splits grouped by patient (no
   patient in two splits; the source's official splits where it has them) with ``--folds`` folds and
   a ``--train-subsample``, and ``info.json`` with the contract and the ingest's version and options.
   ``ingest_report.json`` beside the store lists every skipped record with its reason.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, NamedTuple, Optional

import numpy as np

from datasets.preprocess import BASELINES, ZSCORES, image_to_contract, signal_to_contract
from datasets.sources import SOURCES, BadRecord, source_class
from datasets.store import STANDARD_LEADS, StoreWriter, make_splits
from util.cli import lock_directory
from util.errors import ConfigError, Preempted, StoreError
from util.files import atomic_write_bytes, atomic_write_text

log = logging.getLogger("ingest")

INGEST_VERSION = 1
PLAN = "plan.json"
# options that change the store's content (the plan refuses a rerun that changes one of them)
_CONTENT_OPTIONS = ("rate", "seconds", "min_seconds", "baseline", "clip", "zscore", "image_size", "dtype", "val",
                    "test", "folds", "train_subsample", "seed", "chunk")
_NOT_CONTENT = ("source", "raw", "out", "workers", "shard", "overwrite", "quiet", "func")


# ---- the command line -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m datasets.ingest", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    for name in SOURCES:
        cls = source_class(name)
        p = sub.add_parser(name, help=(cls.__doc__ or "").strip().split("\n")[0])
        _common_arguments(p, cls.modality)
        cls.add_arguments(p)
    merge = sub.add_parser("merge", help="join the shards of a sharded ingest into the store")
    merge.add_argument("--out", required=True, type=Path, help="the store folder the shards were ingested for")
    merge.add_argument("--overwrite", action="store_true", help="replace an existing store")
    merge.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _common_arguments(p: argparse.ArgumentParser, modality: str) -> None:
    p.add_argument("--raw", required=True, type=Path, help="the downloaded dataset folder")
    p.add_argument("--out", required=True, type=Path, help="the store folder to create, e.g. data/ptbxl")
    p.add_argument("--workers", type=int, default=max(1, min(8, (os.cpu_count() or 1) - 1)),
                   help="processes that read records (default: cores - 1, at most 8)")
    p.add_argument("--chunk", type=int, default=256, help="records per work-folder chunk (the unit of resuming)")
    p.add_argument("--shard", default="1/1", help="K/N: ingest only part K of N (then `merge`)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    if modality == "ecg":
        p.add_argument("--rate", type=float, default=500.0, help="sampling rate of the store in Hz (default 500)")
        p.add_argument("--seconds", type=float, default=10.0, help="record length in the store (default 10 s)")
        p.add_argument("--min-seconds", type=float, default=None,
                       help="shorter records are skipped; longer ones up to --seconds are zero-padded "
                            "(default: --seconds, i.e. no padding)")
        p.add_argument("--baseline", choices=BASELINES, default="none", help="baseline removal (default none)")
        p.add_argument("--clip", type=float, default=None, help="clip each lead to mean +- CLIP std (reference: 4)")
        p.add_argument("--zscore", choices=ZSCORES, default="none", help="normalisation (default none)")
        p.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored dtype")
    else:
        p.add_argument("--image-size", type=int, default=128, help="images are resized to SIZE x SIZE (default 128)")
    p.add_argument("--val", type=float, default=0.1, help="validation fraction (sources without official splits)")
    p.add_argument("--test", type=float, default=0.1, help="test fraction (sources without official splits)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds over train")
    p.add_argument("--train-subsample", type=float, default=0.1, help="fraction of train in train_subsample")
    p.add_argument("--seed", type=int, default=0, help="seed of the drawn splits")


def check_options(options: argparse.Namespace, modality: str) -> None:
    """Every common option checked before any work, all problems in one message."""
    problems = []

    def need(ok: bool, text: str) -> None:
        if not ok:
            problems.append(text)

    need(options.workers >= 1, f"--workers must be at least 1 (got {options.workers})")
    need(options.chunk >= 1, f"--chunk must be at least 1 (got {options.chunk})")
    need(0 <= options.val < 1 and 0 <= options.test < 1 and options.val + options.test < 1,
         f"--val and --test must be fractions in [0, 1) that leave some training records (got {options.val}, "
         f"{options.test})")
    need(options.folds >= 0, f"--folds must be 0 (none) or more (got {options.folds})")
    need(0 <= options.train_subsample <= 1, f"--train-subsample must be in [0, 1] (got {options.train_subsample})")
    if modality == "ecg":
        need(options.rate > 0, f"--rate must be a positive number of Hz (got {options.rate})")
        need(options.seconds > 0, f"--seconds must be positive (got {options.seconds})")
        need(options.min_seconds is None or 0 < options.min_seconds <= options.seconds,
             f"--min-seconds must be in (0, --seconds] (got {options.min_seconds})")
        need(options.clip is None or options.clip > 0, f"--clip must be a positive number of std (got {options.clip})")
    else:
        need(options.image_size >= 8, f"--image-size must be at least 8 pixels (got {options.image_size})")
    try:
        _shard(options.shard)
    except StoreError as e:
        problems.append(str(e))
    if problems:
        raise ConfigError("; ".join(problems))


def _shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise StoreError(f"--shard must be K/N, e.g. 3/8, got {text!r}") from None
    if not 1 <= k <= n:
        raise StoreError(f"--shard {text}: K must be between 1 and N")
    return k, n


# ---- the contract of a store, and the plan of an ingest ------------------------------------------------
def contract_of(options: argparse.Namespace, modality: str) -> dict:
    """The preprocessing contract ``info.json`` records (see ``util.contract``)."""
    base = {"modality": modality, "source": options.source, "ingest_version": INGEST_VERSION}
    if modality == "ecg":
        return {**base, "sampling_rate": float(options.rate), "seconds": float(options.seconds),
                "channel_names": list(STANDARD_LEADS), "units": "mV", "baseline": options.baseline,
                "clip": options.clip, "zscore": options.zscore}
    return {**base, "image_size": int(options.image_size), "channel_names": ["gray"],
            "intensity": "centred square, bilinear resize, 0.5-99.5 percentile to uint8"}


def _plan_options(options: argparse.Namespace) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(options).items())
            if k not in _NOT_CONTENT}


def _work_dir(out: Path) -> Path:
    return out.parent / f"{out.name}.parts"


# ---- reading one record (in the worker processes) ---------------------------------------------------
_READER: Any = None


def _init_worker(reader: Any) -> None:
    global _READER
    _READER = reader
    # Ctrl-C and SIGUSR1 (to the whole process group) are the main process's to handle: it stops the
    # workers and keeps the chunks done so far. SIGTERM keeps its default.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _worker_loop(tasks: Any, results: Any, reader: Any, inherited: list) -> None:
    # the main process's pipe ends copied by fork: closed here so that EOF and broken pipes reach
    # whoever is at the other end when the main process or a worker dies
    for pipe in inherited:
        pipe.close()
    _init_worker(reader)
    while True:
        try:
            task = tasks.recv()
        except EOFError:  # the main process is gone
            return
        if task is None:
            return
        try:
            results.send(_prepare(task))
        except OSError:  # the main process is gone
            return


class Workers:
    """``n`` forked processes, each with its own two pipes: task i goes to worker i % n and its result
    comes back on that worker's result pipe, so results are read in task order. No lock or queue is
    shared, so a worker that dies (killed by the OS when out of memory, say) is an error rather than a
    hang, and stopping them (kill, join) cannot deadlock, as ``multiprocessing.Pool.terminate`` can.
    The pipes are one-way OS pipes, not socket pairs: a dead worker's unread results can still be
    read, then EOF."""

    AHEAD = 2  # tasks queued per worker beyond the one it works on

    def __init__(self, n: int, reader: Any) -> None:
        context = multiprocessing.get_context("fork")
        self.processes, self.task_pipes, self.result_pipes = [], [], []
        for _ in range(n):
            task_out, task_in = context.Pipe(duplex=False)
            result_out, result_in = context.Pipe(duplex=False)
            inherited = self.task_pipes + self.result_pipes + [task_in, result_out]
            process = context.Process(target=_worker_loop, args=(task_out, result_in, reader, inherited),
                                      daemon=True)
            process.start()
            task_out.close()
            result_in.close()
            self.processes.append(process)
            self.task_pipes.append(task_in)
            self.result_pipes.append(result_out)

    def imap(self, tasks):
        """Yield ``_prepare(task)`` for each task, in order."""
        numbered, waiting = enumerate(tasks), deque()

        def send_next() -> None:
            for i, task in numbered:
                worker = i % len(self.processes)
                try:
                    self.task_pipes[worker].send(task)
                except OSError:  # a broken pipe: the worker is gone, but results it sent may still be
                    pass         # in the pipe; its recv below yields those first, then EOF
                waiting.append(worker)
                return

        for _ in range((self.AHEAD + 1) * len(self.processes)):
            send_next()
        while waiting:
            worker = waiting.popleft()
            try:
                result = self.result_pipes[worker].recv()
            except (EOFError, OSError):
                self._died(worker)
            send_next()
            yield result

    def _died(self, worker: int) -> None:
        self.processes[worker].join(5)
        raise StoreError(f"an ingest worker process died (exit code {self.processes[worker].exitcode}; -9 is usually "
                         "the system killing it for lack of memory): rerun the same command, with fewer --workers "
                         "if memory is short; the chunks done so far are kept")

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for task_pipe, process in zip(self.task_pipes, self.processes):
            if exc_type is None:
                try:
                    task_pipe.send(None)  # done: let it exit
                except OSError:
                    pass
            else:
                process.kill()  # stopped or failed: the chunks written so far are what counts
        for process in self.processes:
            process.join()
        for pipe in self.task_pipes + self.result_pipes:
            pipe.close()


def _prepare(task: tuple) -> tuple:
    """``(position, array | None, padded, reason)`` for one record."""
    position, ref, options, modality = task
    try:
        data = _READER.read(ref)
        if modality == "ecg":
            x, padded = signal_to_contract(data, rate=options.rate, seconds=options.seconds,
                                           min_seconds=options.min_seconds, baseline=options.baseline,
                                           clip=options.clip, zscore=options.zscore)
            return position, x.astype(options.dtype), padded, None
        return position, image_to_contract(data, size=options.image_size), False, None
    except BadRecord as e:
        return position, None, False, str(e) or "unreadable"
    except Exception as e:  # noqa: BLE001 - a reader's unexpected failure on one record skips that record
        return position, None, False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]


def _sample_shape(options: argparse.Namespace, modality: str) -> tuple:
    if modality == "ecg":
        return (len(STANDARD_LEADS), int(round(options.rate * options.seconds)))
    return (1, int(options.image_size), int(options.image_size))


# ---- one shard: index, read, prepare, write chunks ------------------------------------------------------
def run_shard(options: argparse.Namespace) -> Path:
    """Ingest shard K of N of ``options.source`` into the work folder; returns the shard's folder."""
    cls = source_class(options.source)
    k, n = _shard(options.shard)
    if options.out.exists() and not options.overwrite:
        raise StoreError(f"{options.out} exists already; pass --overwrite to replace it")
    if not options.raw.is_dir():
        raise StoreError(f"--raw {options.raw} is not a folder: give the downloaded dataset's folder")
    reader = cls(options.raw, options)
    started = time.time()
    try:
        refs = sorted(reader.index(), key=lambda r: r.record_id)
    except ValueError as e:  # readers say so for raw data they cannot use at all (a pickled tensor file ...)
        raise StoreError(f"{options.source}: cannot index {options.raw}: {e}") from None
    ids = [r.record_id for r in refs]
    if len(set(ids)) != len(ids):
        raise StoreError(f"{options.source}: the index lists some record ids twice; they must be unique")
    work = _work_dir(options.out)
    index_hash = hashlib.blake2b("\n".join(ids).encode(), digest_size=8).hexdigest()
    plan = {"source": options.source, "modality": cls.modality, "ingest_version": INGEST_VERSION,
            "options": _plan_options(options), "shards": n, "records": len(refs), "index": index_hash,
            "contract": contract_of(options, cls.modality)}
    _check_plan(work, plan, options.overwrite and k == 1 and n == 1)
    mine = list(range(len(refs) * (k - 1) // n, len(refs) * k // n))  # a contiguous block of the index
    folder = work / f"shard_{k}_of_{n}"
    folder.mkdir(parents=True, exist_ok=True)
    lock = lock_directory(str(folder), "the same shard cannot be ingested twice at once; wait for the other "
                          "ingest to finish (its chunks are kept), or kill it and rerun")
    try:
        _ingest_chunks(options, reader, refs, mine, folder, started)
    finally:
        if lock is not None:
            lock.close()
    return folder


def _ingest_chunks(options: argparse.Namespace, reader: Any, refs: list, mine: list, folder: Path,
                   started: float) -> None:
    cls = type(reader)
    k, n = _shard(options.shard)
    chunks = [mine[s:s + options.chunk] for s in range(0, len(mine), options.chunk)]
    todo = [c for c, positions in enumerate(chunks) if not (folder / f"chunk_{c:06d}.json").is_file()]
    done_before = len(chunks) - len(todo)
    if done_before:
        log.info("%s: %d of %d chunk(s) of shard %d/%d are done already; continuing", options.out, done_before,
                 len(chunks), k, n)
    progress = _progress(sum(len(chunks[c]) for c in todo), f"{options.source} {k}/{n}", options.quiet)
    tasks = ((p, refs[p], options, cls.modality) for c in todo for p in chunks[c])
    with Workers(options.workers, reader) as workers:
        results = workers.imap(tasks)  # in order; the workers run ahead of the writes
        for c in todo:
            done = [next(results) for _ in chunks[c]]
            _write_chunk(folder, c, refs, done, options, cls.modality)
            progress.update(len(done))
    progress.close()
    meta = {"index_problems": [list(p) for p in getattr(reader, "index_problems", [])],
            "excluded": dict(getattr(reader, "excluded", {}) or {}),
            "unknown_codes": dict(getattr(reader, "unknown_codes", {}) or {}),
            "task_type": reader.task_type, "label_names": list(reader.label_names or []),
            "provenance": reader.provenance, "chunks": len(chunks), "seconds": round(time.time() - started, 1)}
    atomic_write_text(folder / "done.json", json.dumps(meta))


def _check_plan(work: Path, plan: dict, overwrite: bool) -> None:
    path = work / PLAN
    if path.is_file():
        old = json.loads(path.read_text())
        if old != plan:
            if not overwrite:
                changed = sorted(k for k in set(old["options"]) | set(plan["options"])
                                 if old["options"].get(k) != plan["options"].get(k))
                raise StoreError(f"{work} holds an unfinished ingest with other settings "
                                 f"({', '.join(changed) or 'the source or its records'} differ); rerun it with "
                                 "the same options to continue, or pass --overwrite to start afresh")
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        atomic_write_text(path, json.dumps(plan, indent=2, default=str))


def _write_chunk(folder: Path, c: int, refs: list, results: list, options: argparse.Namespace,
                 modality: str) -> None:
    """A chunk's arrays (``.npy``) and its records' metadata (``.json``, written last: it marks the
    chunk done)."""
    good = [(p, x, padded) for p, x, padded, reason in results if reason is None]
    shape = _sample_shape(options, modality)
    dtype = options.dtype if modality == "ecg" else "uint8"
    data = np.stack([x for _, x, _ in good]) if good else np.zeros((0, *shape), dtype=dtype)
    import io

    buffer = io.BytesIO()
    np.save(buffer, data)
    atomic_write_bytes(folder / f"chunk_{c:06d}.npy", buffer.getbuffer())
    records = [{"position": p, "record_id": refs[p].record_id, "patient_id": refs[p].patient_id,
                "labels": refs[p].labels, "split": refs[p].split, "padded": padded}
               for p, _, padded in good]
    bad = [{"record_id": refs[p].record_id, "reason": reason} for p, _, _, reason in results if reason is not None]
    atomic_write_text(folder / f"chunk_{c:06d}.json", json.dumps({"records": records, "bad": bad}, default=str))


def _progress(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="rec", disable=quiet, file=sys.stderr, mininterval=1.0)


# ---- the store, from every shard's chunks -------------------------------------------------------------
def assemble(out: Path, overwrite: bool = False, quiet: bool = False) -> Path:
    """Write the store ``out`` from the work folder's chunks (all shards must be done)."""
    work = _work_dir(out)
    if not (work / PLAN).is_file():
        raise StoreError(f"no ingest to merge for {out}: {work} does not exist (run the shards first)")
    plan = json.loads((work / PLAN).read_text())
    shards = [work / f"shard_{k}_of_{plan['shards']}" for k in range(1, plan["shards"] + 1)]
    missing = [s.name for s in shards if not (s / "done.json").is_file()]
    if missing:
        raise StoreError(f"shard(s) {', '.join(missing)} of {out} are not finished: run them "
                         "(python -m datasets.ingest <source> ... --shard K/N) before merging")
    lock = lock_directory(str(work), "two merges of one ingest cannot run at once; wait for the other to finish")
    try:
        return _assemble(out, work, plan, shards, overwrite, quiet)
    finally:
        if lock is not None:
            lock.close()


def _assemble(out: Path, work: Path, plan: dict, shards: list, overwrite: bool, quiet: bool) -> Path:
    metas = [json.loads((s / "done.json").read_text()) for s in shards]
    records, bad, chunk_files = [], [], []  # records: (position, chunk file number, row, metadata)
    for s, meta in zip(shards, metas):
        for c in range(meta["chunks"]):
            part = json.loads((s / f"chunk_{c:06d}.json").read_text())
            for row, r in enumerate(part["records"]):
                records.append(_Written(r["position"], len(chunk_files), row, r["record_id"], r["patient_id"],
                                        r["labels"], r["split"], r["padded"]))
            bad += part["bad"]
            chunk_files.append(s / f"chunk_{c:06d}.npy")
    if not records:
        raise StoreError(f"no record of {plan['source']} could be ingested ({len(bad)} skipped; see the reasons "
                         f"in {work}); check --raw and the source's options")
    records.sort(key=lambda r: r.position)  # index order (the shards are contiguous blocks of it)
    bad.sort(key=lambda b: b["record_id"])
    meta0, options = metas[0], plan["options"]
    task_type, label_names = meta0["task_type"], meta0["label_names"]
    labels = _label_array([r.labels for r in records], task_type, label_names)
    patients = [r.patient_id if r.patient_id not in (None, "") else f"record:{r.record_id}" for r in records]
    official = [r.split for r in records]
    splits = make_splits(len(records), labels if task_type in ("multilabel", "multiclass") else None,
                         groups=patients, official=official if any(official) else None, val=options["val"],
                         test=options["test"], folds=options["folds"], train_subsample=options["train_subsample"],
                         seed=options["seed"])
    contract = plan["contract"]
    modality = plan["modality"]
    shape = tuple(np.load(chunk_files[0], mmap_mode="r").shape[1:])
    dtype = options.get("dtype") or "uint8"
    writer = StoreWriter(out, len(records), shape, np.dtype(dtype), kind="signals" if modality == "ecg" else "images",
                         overwrite=overwrite)
    progress = _progress(len(records), f"writing {out.name}", quiet)
    current, chunk = -1, None
    with writer:
        for i, r in enumerate(records):
            if r.chunk != current:  # one chunk mapped at a time: records come in chunk order
                current, chunk = r.chunk, np.load(chunk_files[r.chunk], mmap_mode="r")
            writer[i] = chunk[r.row]
            progress.update()
        progress.close()
        counts = {"indexed": plan["records"], "written": len(records), "skipped": len(bad),
                  "padded": sum(1 for r in records if r.padded)}
        info = {"task_type": task_type, "label_names": label_names, "provenance": meta0["provenance"],
                "synthetic": False, "contract": contract,
                "ingest": {"version": INGEST_VERSION, "source": plan["source"], "options": options,
                           "counts": counts}}
        if modality == "ecg":
            info.update(sampling_rate=contract["sampling_rate"], lead_names=contract["channel_names"], units="mV")
        else:
            info.update(units="intensity (uint8)")
        writer.finish(labels=labels, record_ids=[r.record_id for r in records], splits=splits, info=info,
                      patient_ids=[r.patient_id or "" for r in records])
    report = {"source": plan["source"], "store": str(out), "counts": counts, "skipped": bad,
              # every shard indexes the whole source: the first one's counts are everyone's
              "index_problems": meta0["index_problems"], "excluded": meta0["excluded"],
              "unknown_codes": meta0["unknown_codes"],
              "seconds": round(sum(m["seconds"] for m in metas), 1), "options": options}
    atomic_write_text(out / "ingest_report.json", json.dumps(report, indent=2, default=str) + "\n")
    shutil.rmtree(work)
    return out


class _Written(NamedTuple):
    """One record of the chunks, as the store is written from them."""
    position: int
    chunk: int
    row: int
    record_id: str
    patient_id: Optional[str]
    labels: Any
    split: Optional[str]
    padded: bool


def _label_array(labels: list, task_type: Optional[str], names: list) -> Optional[np.ndarray]:
    if task_type is None:
        return None
    if task_type == "multilabel":
        y = np.zeros((len(labels), len(names)), dtype=np.float32)
        column = {name: j for j, name in enumerate(names)}
        for i, row in enumerate(labels):
            for name in row or []:
                y[i, column[name]] = 1.0
        return y
    if task_type == "multiclass":
        index = {name: j for j, name in enumerate(names)}
        return np.array([index[v] for v in labels], dtype=np.int64)
    return np.asarray(labels, dtype=np.float32)  # regression


def summary(report_path: Path) -> str:
    report = json.loads(report_path.read_text())
    counts = report["counts"]
    lines = [f"{report['store']}: {counts['written']} of {counts['indexed']} records written, "
             f"{counts['skipped']} skipped, {counts['padded']} zero-padded"]
    reasons: dict = {}
    for b in report["skipped"]:  # grouped by the reason's words before any detail, numbers as N
        key = re.sub(r"\b\d+(\.\d+)?\b", "N", b["reason"].split(" (")[0])[:100]
        reasons.setdefault(key, []).append(b["record_id"])
    for reason, ids in sorted(reasons.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"  skipped {len(ids)}: {reason} (e.g. {', '.join(ids[:3])})")
    for what in ("excluded", "unknown_codes"):
        if report[what]:
            lines.append(f"  {what.replace('_', ' ')}: " + ", ".join(f"{k} {v}" for k, v in report[what].items()))
    if report["index_problems"]:
        lines.append(f"  metadata problems: {len(report['index_problems'])} (see ingest_report.json)")
    return "\n".join(lines)


def _stop_on_signal(signum, frame) -> None:
    raise Preempted(f"stopped by {signal.Signals(signum).name}")


def main(argv: Optional[list] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    options = build_parser().parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGUSR1):  # a scheduler's stop: keep the chunks, exit 75 (requeue)
        signal.signal(sig, _stop_on_signal)
    try:
        if options.source == "merge":
            out = assemble(options.out, options.overwrite, options.quiet)
        else:
            check_options(options, source_class(options.source).modality)
            folder = run_shard(options)
            if options.shard != "1/1":
                print(f"{folder.name} of {options.out} done; when every shard is, run: "
                      f"python -m datasets.ingest merge --out {options.out}", file=sys.stderr)
                return 0
            out = assemble(options.out, options.overwrite, options.quiet)
    except (ConfigError, StoreError, OSError) as e:
        from util.files import describe_os_error

        print(f"Error: {describe_os_error(e) if isinstance(e, OSError) else e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Interrupted: the chunks finished so far are kept; rerun the same command to continue",
              file=sys.stderr)
        return 130
    except Preempted as e:
        print(f"Preempted: {e}; the chunks finished so far are kept; rerun the same command to continue",
              file=sys.stderr)
        return 75
    print(summary(out / "ingest_report.json"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
