"""Benchmark: ingestion throughput and memory (a benchmark, not a test).

Builds a MIMIC-IV-ECG-layout WFDB tree (``record_list.csv`` + ``files/pNNNN/p<subject>/s<study>/``;
12 leads, 10 s at 500 Hz, format 16: the real dataset's layout and record size) from the real 12-lead
ECG in pydicom's test data (each record a different crop and scale of it), then runs

    python -m datasets.ingest mimic_iv_ecg --raw TREE --out STORE --workers W --quiet

as a user does (a fresh process each time, end to end: index, read, resample-free preparation, chunks,
the store) and reports

- records per second with 1 and 2 workers on ``--records`` records, ``--repeat`` times, the two
  alternating inside every repeat (median, and the 2-worker / 1-worker ratio);
- the peak resident memory at ``--records`` and at ``--big`` records (2 workers), sampled from /proc
  every 50 ms: the main process's RSS, its anonymous part (what would grow with the number of
  records; the rest is mapped pages of the files being written, which the kernel reclaims), and the
  RSS of the main process plus its workers, to show that memory does not grow with the number of
  records beyond their metadata.

Run from the repository root (the tree is kept in --dir for reruns; 20,000 records take 2.4 GB and
the store another 2.4 GB while it is written):
    python bench/ingest_throughput.py [--records 2000] [--big 20000] [--repeat 3] [--dir /tmp/ingest_bench]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_tree(root: Path, n: int) -> Path:
    """The first ``n`` records of a MIMIC-layout tree in ``root`` (made once, reused by reruns)."""
    import pandas as pd
    import pydicom
    import wfdb
    from pydicom.data import get_testdata_file

    tree = root / f"tree_{n}"
    if (tree / "record_list.csv").is_file():
        return tree
    ecg = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm", download=False)).waveform_array(0)[::2] / 1000.0
    leads = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    rows, started = [], time.time()
    for i in range(n):
        subject, study = 10000000 + i // 5, 40000000 + i
        rel = f"files/p{str(subject)[:4]}/p{subject}/s{study}/{study}"
        folder = tree / os.path.dirname(rel)
        folder.mkdir(parents=True, exist_ok=True)
        wfdb.wrsamp(str(study), fs=500, units=["mV"] * 12, sig_name=leads, fmt=["16"] * 12, adc_gain=[1000.0] * 12,
                    baseline=[0] * 12, p_signal=np.roll(ecg, 37 * i, axis=0) * (0.8 + 0.4 * (i % 11) / 10),
                    write_dir=str(folder))
        rows.append(dict(subject_id=subject, study_id=study, file_name=study, ecg_time="2180-01-01", path=rel))
        if i and i % 5000 == 0:
            print(f"  wrote {i} records ({time.time() - started:.0f} s)", file=sys.stderr)
    pd.DataFrame(rows).to_csv(tree / "record_list.csv", index=False)
    return tree


def _status_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


def memory(pid: int) -> dict:
    """KiB: the main process's RSS and its anonymous part (RssAnon: the heap, what grows with the
    number of records; the rest is mapped file pages of the store being written, which the kernel
    reclaims), and the RSS of the main process plus its workers."""
    rss, anon = _status_kib(pid, "VmRSS"), _status_kib(pid, "RssAnon")
    return {"main": rss, "main_anon": anon, "all": rss + sum(_status_kib(c, "VmRSS") for c in _children(pid))}


def ingest(tree: Path, out: Path, workers: int) -> dict:
    """One ingest as a subprocess: its wall time and peak memory."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out.parent / f"{out.name}.parts", ignore_errors=True)
    cmd = [sys.executable, "-m", "datasets.ingest", "mimic_iv_ecg", "--raw", str(tree), "--out", str(out),
           "--workers", str(workers), "--quiet"]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = {"main": 0, "main_anon": 0, "all": 0}
    while proc.poll() is None:
        now = memory(proc.pid)
        peak = {k: max(peak[k], now[k]) for k in peak}
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"ingest failed ({proc.returncode}):\n{err}")
    return {"seconds": seconds, **{f"peak_{k}": v * 1024 for k, v in peak.items()},
            "summary": err.strip().splitlines()[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=2000, help="records of the throughput runs")
    parser.add_argument("--big", type=int, default=20000, help="records of the memory run (0: skip)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ingest_bench"))
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    print(f"building the WFDB trees in {args.dir} ...", file=sys.stderr)
    small = build_tree(args.dir, args.records)
    big = build_tree(args.dir, args.big) if args.big else None

    rates: dict[int, list[float]] = {1: [], 2: []}
    peaks: dict[int, list[dict]] = {1: [], 2: []}
    for r in range(args.repeat):
        for workers in ((1, 2) if r % 2 == 0 else (2, 1)):  # alternate who goes first
            result = ingest(small, args.dir / "store", workers)
            rates[workers].append(args.records / result["seconds"])
            peaks[workers].append(result)
            print(f"  repeat {r + 1}, {workers} worker(s): {rates[workers][-1]:.0f} records/s", file=sys.stderr)
    mib = 2 ** 20
    print(f"\nWFDB 12-lead 10 s records (500 Hz, format 16) -> store (float16), {os.cpu_count()} CPU cores")
    print(f"throughput on {args.records} records, median of {args.repeat} (min-max):")
    for workers in (1, 2):
        print(f"  {workers} worker(s): {statistics.median(rates[workers]):7.0f} records/s "
              f"({min(rates[workers]):.0f}-{max(rates[workers]):.0f})")
    print(f"  2 workers / 1 worker: {statistics.median(rates[2]) / statistics.median(rates[1]):.2f}x")
    print("peak memory, 2 workers (main process RSS, of it anonymous / main + workers RSS):")

    def show(n: int, result: dict) -> None:
        print(f"  {n:6d} records: {result['peak_main'] / mib:6.0f} MiB, {result['peak_main_anon'] / mib:5.0f} MiB "
              f"anonymous / {result['peak_all'] / mib:6.0f} MiB")

    show(args.records, peaks[2][-1])
    if big is not None:
        result = ingest(big, args.dir / "store_big", 2)
        show(args.big, result)
        print(f"  ({args.big / result['seconds']:.0f} records/s; {result['summary'].strip()})")
        shutil.rmtree(args.dir / "store_big", ignore_errors=True)
    shutil.rmtree(args.dir / "store", ignore_errors=True)


if __name__ == "__main__":
    main()
