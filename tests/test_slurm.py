"""The SLURM batch scripts in scripts/slurm/, run with bash on this machine (their #SBATCH lines are
comments): fake `srun` and `scontrol` on PATH, SLURM's environment variables set by hand, and a tiny
entry point on the real command line (util.cli) that records each rank instead of training.

Checked: the launch topology (srun x torchrun --standalone, srun x torchrun per node over a c10d
rendezvous, array tasks of one sweep), the run / sweep directories pinned by the job id, and the
signals as a cluster sends them: the time-limit warning (SIGUSR1 to the batch shell, `B:`) reaches
every rank, which checkpoints and exits 75, and the job is requeued once; scancel (SIGTERM to the
whole process tree, DataLoader workers included) stops it without a requeue; exit code 75 without
the warning is reported, not requeued; three concurrent array tasks complete one summary."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from util.preemption import EXIT_PREEMPTED

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "scripts", "slurm")
TIMEOUT = 120

ENTRY = """\
import json, os, signal, sys, time
sys.path.insert(0, {repo!r})
from util.cli import run_cli
from util.preemption import Preempted


def main(cfg):
    out = cfg.paths.output_dir
    os.makedirs(out, exist_ok=True)  # rank 0 creates it; another rank may get here first
    rank = int(os.environ.get("RANK", "0"))
    mode = os.environ.get("TEST_MODE", "record")
    got = []
    if mode == "signal":  # wait for the signal the test sends to the batch shell
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: got.append(signal.Signals(signum).name))
        open(os.path.join(out, "ready.%d" % rank), "w").close()
        deadline = time.time() + 30
        while not got and time.time() < deadline:
            time.sleep(0.02)
    record = {{"rank": rank, "world_size": int(os.environ.get("WORLD_SIZE", "1")),
              "node_rank": int(os.environ.get("GROUP_RANK", "0")), "slurm_nodeid": os.environ.get("SLURM_NODEID"),
              "output_dir": out, "resume": cfg.get("resume"), "epochs": cfg.trainer.max_epochs, "signals": got}}
    with open(os.path.join(out, "seen.%d.json" % rank), "w") as f:
        json.dump(record, f)
    if mode in ("preempt", "signal"):
        raise Preempted("test: preempted")
    if mode == "crash":
        raise RuntimeError("test: crashed")
    return {{"epochs": cfg.trainer.max_epochs}}


sys.exit(run_cli(main, primary="finetune", prog="main_finetune.py"))
"""

# srun: the command once per node ($SLURM_NNODES), here all on this machine, with the node's
# SLURM_NODEID/SLURM_PROCID; SIGUSR1 is forwarded to the tasks, SIGTERM kills them (as real srun
# does: "forcing job termination"); exits with the highest exit code of the tasks
SRUN = r"""#!/bin/bash
while [[ $# -gt 0 && $1 == -* ]]; do shift; done
pids=()
for ((i = 0; i < ${SLURM_NNODES:-1}; i++)); do
    SLURM_NODEID=$i SLURM_PROCID=$i SLURM_LOCALID=0 "$@" &
    pids+=($!)
done
trap 'interrupted=1; kill -USR1 "${pids[@]}" 2>/dev/null' USR1
trap 'interrupted=1; kill -KILL "${pids[@]}" 2>/dev/null' TERM
rc=0
for pid in "${pids[@]}"; do
    previous=""
    while :; do
        interrupted=0
        wait "$pid" 2>/dev/null; r=$?
        if [[ $r -eq 127 && -n $previous ]]; then r=$previous; break; fi
        [[ $interrupted -eq 1 && $r -gt 128 ]] || break
        previous=$r
    done
    [[ $r -gt $rc ]] && rc=$r
done
exit $rc
"""

SCONTROL = r"""#!/bin/bash
case $1 in
    show) [[ $2 == hostnames ]] || exit 1
          for ((i = 0; i < ${SLURM_NNODES:-1}; i++)); do echo localhost; done ;;
    requeue) if [[ ${SHIM_REQUEUE_ANSWER:-} == pending ]]; then  # Slurm requeued the job itself
                 echo "scontrol: error: Job is pending execution" >&2; exit 1
             fi
             echo "$2" >> "${SHIM_REQUEUE_LOG:?}" ;;
    *) echo "fake scontrol: $* is not supported" >&2; exit 1 ;;
esac
"""

# leaked from a surrounding SLURM job or torchrun, these would change what the scripts do
FOREIGN = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT", "HYDRA_FULL_ERROR",
           "GPUS_PER_NODE", "GPUS_PER_TASK", "LOG_ROOT", "VENV", "REPO_DIR", "FORWARD_SIGNAL", "MAX_REQUEUES",
           "SHUTDOWN_TIMEOUT", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "SLURM_SCRIPTS_DIR")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A fake SLURM allocation in ``tmp_path``: shims, environment, entry point, requeue log."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        shims = tmp_path / "shims"
        shims.mkdir()
        for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
            (shims / name).write_text(text)
            (shims / name).chmod(0o755)
        self.entry = tmp_path / "entry.py"
        self.entry.write_text(ENTRY.format(repo=REPO))
        self.log_root = tmp_path / "logroot"
        self.requeue_log = tmp_path / "requeued.txt"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SLURM_", "SRUN_", "TORCHELASTIC_", "PET_")) and k not in FOREIGN}
        venv = sys.prefix if os.path.isfile(os.path.join(sys.prefix, "bin", "activate")) else str(tmp_path / "no-venv")
        env.update(PATH=os.pathsep.join([str(shims), os.path.dirname(sys.executable), env.get("PATH", "")]),
                   VENV=venv, SLURM_SUBMIT_DIR=REPO, LOG_ROOT=str(self.log_root),
                   SHIM_REQUEUE_LOG=str(self.requeue_log), OMP_NUM_THREADS="1",
                   SLURM_JOB_ID="4242", SLURM_NNODES="1", SLURM_JOB_NODELIST="localhost")
        self.env = env

    def start(self, script, *overrides, entry=None, **env):
        """``bash scripts/slurm/<script> <entry> <overrides>`` (the recording entry point by default) in
        its own session, so that a failed test can stop all of it."""
        args = ["bash", os.path.join(SCRIPTS, script), str(entry or self.entry), f"paths.log_dir={self.tmp}/logs",
                f"paths.data_dir={self.tmp}/data", *overrides]
        return subprocess.Popen(args, cwd=self.tmp, env={**self.env, **env}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)

    @staticmethod
    def finish(proc, timeout=TIMEOUT):
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            pytest.fail(f"timed out after {timeout} s:\n{out[-4000:]}")
        return proc.returncode, out

    def run(self, script, *overrides, entry=None, **env):
        return self.finish(self.start(script, *overrides, entry=entry, **env))

    def requeued(self):
        return self.requeue_log.read_text().split() if self.requeue_log.exists() else []


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (whatever their session: torchrun starts its workers in new
    ones), as Slurm finds a job's processes in its cgroup."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def signal_tree(root: int, sig: int) -> None:
    for pid in process_tree(root):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def records(run_dir):
    found = sorted(f for f in os.listdir(run_dir) if f.startswith("seen."))
    return [json.load(open(os.path.join(run_dir, f))) for f in found]


def wait_for_files(folder, names, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(os.path.exists(os.path.join(folder, n)) for n in names):
            return
        if proc.poll() is not None:
            pytest.fail(f"the script ended (exit code {proc.returncode}) before its ranks were ready:\n"
                        f"{proc.stdout.read()[-4000:]}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"ranks not ready after {timeout} s:\n{proc.communicate()[0][-4000:]}")


@pytest.fixture
def cluster(tmp_path):
    return Cluster(tmp_path)


def test_single_node_runs_one_process_per_gpu_in_the_run_directory_of_the_job(cluster):
    rc, out = cluster.run("single_node.sbatch", SLURM_GPUS_ON_NODE="2")
    assert rc == 0, out[-4000:]
    run_dir = str(cluster.log_root / "slurm" / "4242")
    assert os.listdir(cluster.log_root / "slurm") == ["4242"]
    seen = records(run_dir)
    assert [r["rank"] for r in seen] == [0, 1]
    assert all(r["world_size"] == 2 and r["output_dir"] == run_dir and r["resume"] == "auto" for r in seen)
    assert os.path.isfile(os.path.join(run_dir, ".hydra", "config.yaml"))
    assert cluster.requeued() == []


def test_multi_node_starts_one_torchrun_per_node_over_a_c10d_rendezvous(cluster):
    rc, out = cluster.run("multi_node.sbatch", SLURM_NNODES="2", GPUS_PER_NODE="1", MASTER_PORT=str(free_port()))
    assert rc == 0, out[-4000:]
    run_dir = str(cluster.log_root / "slurm" / "4242")
    seen = records(run_dir)
    assert [r["rank"] for r in seen] == [0, 1]
    assert all(r["world_size"] == 2 and r["output_dir"] == run_dir for r in seen)
    assert sorted(r["node_rank"] for r in seen) == [0, 1]  # torchrun's node ranks
    assert sorted(r["slurm_nodeid"] for r in seen) == ["0", "1"]  # one rank on each srun task
    assert cluster.requeued() == []


def test_array_tasks_run_the_jobs_of_one_sweep_into_one_sweep_directory(cluster):
    tasks = [cluster.start("sweep_array.sbatch", "trainer.max_epochs=1,2,3", SLURM_ARRAY_JOB_ID="777",
                           SLURM_ARRAY_TASK_ID=str(i), SLURM_JOB_ID=str(778 + i)) for i in (0, 1, 2)]
    for proc in tasks:  # all at once, as array tasks run: summary.json is rebuilt by each, without a lock
        rc, out = cluster.finish(proc)
        assert rc == 0, out[-4000:]
    sweep = cluster.log_root / "sweeps" / "777"
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["0", "1", "2"]
    for num, epochs in ((0, 1), (1, 2), (2, 3)):
        (seen,) = records(sweep / str(num))
        assert seen["world_size"] == 1 and seen["epochs"] == epochs and seen["output_dir"] == str(sweep / str(num))
    summary = json.load(open(sweep / "summary.json"))
    assert [(j["num"], j["status"], j["metrics"]) for j in summary["jobs"]] == [
        (0, "ok", {"epochs": 1}), (1, "ok", {"epochs": 2}), (2, "ok", {"epochs": 3})]
    assert not any(".lock" in p.name for p in sweep.iterdir())
    assert cluster.requeued() == []


def test_the_job_count_for_sizing_an_array_is_printed_for_an_out_of_range_index(cluster):
    rc, out = cluster.run("sweep_array.sbatch", "trainer.max_epochs=1,2,3", "seed=1,2",
                          SLURM_ARRAY_JOB_ID="777", SLURM_ARRAY_TASK_ID="999999")
    assert rc == 2, out[-4000:]
    assert "this sweep has 6 jobs (0..5); size the SLURM array as --array=0-5" in out
    assert cluster.requeued() == [] and not (cluster.log_root / "sweeps").exists()


@pytest.mark.parametrize("script, overrides, env", [
    # two ranks exit with 75 (torchrun alone would exit with 1); one process per array task
    ("single_node.sbatch", [], {"SLURM_GPUS_ON_NODE": "2"}),
    ("sweep_array.sbatch", ["trainer.max_epochs=1,2"], {"SLURM_ARRAY_JOB_ID": "777", "SLURM_ARRAY_TASK_ID": "1"}),
])
def test_exit_code_75_without_the_time_limit_warning_is_reported_and_not_requeued(cluster, script, overrides, env):
    rc, out = cluster.run(script, *overrides, TEST_MODE="preempt", **env)
    assert rc == EXIT_PREEMPTED, out[-4000:]
    assert cluster.requeued() == [] and "without the time-limit warning; not requeueing" in out


def usr1_to_the_batch_shell(cluster, script, overrides, run_dir, nranks=1, **env):
    """Start ``script`` with ranks that wait for a signal, then send the time-limit warning."""
    proc = cluster.start(script, *overrides, TEST_MODE="signal", **env)
    wait_for_files(run_dir, [f"ready.{r}" for r in range(nranks)], proc)
    proc.send_signal(signal.SIGUSR1)
    return cluster.finish(proc, timeout=60)


def test_a_requeued_array_task_reruns_its_job_in_the_same_directory(cluster):
    env = dict(SLURM_ARRAY_JOB_ID="777", SLURM_ARRAY_TASK_ID="0")
    sweep = cluster.log_root / "sweeps" / "777"
    rc, out = usr1_to_the_batch_shell(cluster, "sweep_array.sbatch", ["trainer.max_epochs=1,2"], sweep / "0", **env)
    assert rc == 0 and cluster.requeued() == ["777_0"], out[-4000:]
    assert [j["status"] for j in json.load(open(sweep / "summary.json"))["jobs"]] == ["preempted"]
    rc, out = cluster.run("sweep_array.sbatch", "trainer.max_epochs=1,2", SLURM_RESTART_COUNT="1", **env)
    assert rc == 0, out[-4000:]
    assert [(j["num"], j["status"]) for j in json.load(open(sweep / "summary.json"))["jobs"]] == [(0, "ok")]
    assert cluster.requeued() == ["777_0"]


def test_a_job_slurm_already_requeued_counts_as_requeued(cluster):
    env = dict(SLURM_ARRAY_JOB_ID="777", SLURM_ARRAY_TASK_ID="0", SHIM_REQUEUE_ANSWER="pending")
    rc, out = usr1_to_the_batch_shell(cluster, "sweep_array.sbatch", ["seed=1"],
                                      cluster.log_root / "sweeps" / "777" / "0", **env)
    assert rc == 0, out[-4000:]
    assert "Slurm has requeued the job already" in out


def test_a_failed_run_is_not_requeued(cluster):
    rc, out = cluster.run("sweep_array.sbatch", "seed=1", TEST_MODE="crash",
                          SLURM_ARRAY_JOB_ID="777", SLURM_ARRAY_TASK_ID="0")
    assert rc == 1, out[-4000:]
    assert cluster.requeued() == []


def test_requeues_stop_at_max_requeues(cluster):
    rc, out = usr1_to_the_batch_shell(cluster, "sweep_array.sbatch", ["seed=1"],
                                      cluster.log_root / "sweeps" / "777" / "0", SLURM_RESTART_COUNT="3",
                                      MAX_REQUEUES="3", SLURM_ARRAY_JOB_ID="777", SLURM_ARRAY_TASK_ID="0")
    assert rc == EXIT_PREEMPTED, out[-4000:]
    assert cluster.requeued() == []


@pytest.mark.parametrize("script, sig, env, run_dir, nranks, job", [
    # SLURM's time-limit warning, through srun and torchrun to both ranks: requeued
    ("single_node.sbatch", signal.SIGUSR1, {"SLURM_GPUS_ON_NODE": "2"}, "slurm/4242", 2, "4242"),
    # SIGTERM to the batch shell (scancel, the end of the job) is passed on as SIGUSR1 (a SIGTERM would
    # make srun SIGKILL its tasks) so the ranks checkpoint, but the job is not requeued
    ("multi_node.sbatch", signal.SIGTERM, {"SLURM_NNODES": "2", "GPUS_PER_NODE": "1"}, "slurm/4242", 2, None),
    # one process per array task: no torchrun in between
    ("sweep_array.sbatch", signal.SIGUSR1, {"SLURM_ARRAY_JOB_ID": "777", "SLURM_ARRAY_TASK_ID": "0"},
     "sweeps/777/0", 1, "777_0"),
])
def test_a_signal_to_the_batch_shell_reaches_every_rank(cluster, script, sig, env, run_dir, nranks, job):
    if script == "multi_node.sbatch":
        env = {**env, "MASTER_PORT": str(free_port())}
    proc = cluster.start(script, "seed=1", TEST_MODE="signal", **env)
    run_dir = cluster.log_root / run_dir
    wait_for_files(run_dir, [f"ready.{r}" for r in range(nranks)], proc)
    started = time.time()
    proc.send_signal(sig)
    rc, out = cluster.finish(proc, timeout=60)  # a rank the signal misses gives up after 30 s
    assert rc == (0 if job else EXIT_PREEMPTED), out[-4000:]
    assert time.time() - started < 30
    assert cluster.requeued() == ([job] if job else [])
    seen = records(run_dir)
    assert [r["rank"] for r in seen] == list(range(nranks))
    assert all(r["signals"] == ["SIGUSR1"] for r in seen)
    assert f"got {sig.name}" in out


def test_scancel_signals_the_whole_tree_and_the_job_stops_without_a_requeue(cluster):
    proc = cluster.start("single_node.sbatch", "seed=1", TEST_MODE="signal", SLURM_GPUS_ON_NODE="2")
    run_dir = cluster.log_root / "slurm" / "4242"
    wait_for_files(run_dir, ["ready.0", "ready.1"], proc)
    started = time.time()
    signal_tree(proc.pid, signal.SIGTERM)  # scancel: SIGTERM to the batch shell and every process of the job
    rc, out = cluster.finish(proc, timeout=60)
    assert rc != 0 and time.time() - started < 30, out[-4000:]
    assert cluster.requeued() == [] and "stopped by SIGTERM" in out and "not requeueing" in out


# the real training with DataLoader workers (which must leave the signals to the main process)
PRETRAIN = ["model.size=pluto", "model.patch_size=[1,50]", "data.time_steps=500", "data.batch_size=2",
            "data.num_workers=2", "data.persistent_workers=true", "trainer.enable_progress_bar=false",
            "extras.print_config=false", "model.optim.warmup_epochs=1", "trainer.max_epochs=2",
            "trainer.log_every_n_steps=1000"]


@pytest.mark.slow
def test_a_pretraining_stopped_by_usr1_resumes_mid_epoch_in_the_requeued_job(cluster, tmp_path):
    """The real main_pretrain.py on 2 ranks: SIGUSR1 to the batch shell mid-epoch -> last.pt of both
    ranks, requeue; the same job id again -> the same run directory, resumed from that batch."""
    from datasets.demo import build_demo
    from util.checkpoint import load_checkpoint

    build_demo(str(tmp_path / "data"), n_records=96, seed=0, include_real=False)
    entry = os.path.join(REPO, "main_pretrain.py")
    run_dir = cluster.log_root / "slurm" / "4242"
    proc = cluster.start("single_node.sbatch", *PRETRAIN, entry=entry, SLURM_GPUS_ON_NODE="2")
    log_file = run_dir / "pretrain.log"
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:  # until training has started
        if log_file.exists() and "effective batch" in log_file.read_text():
            break
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGUSR1)
    rc, out = cluster.finish(proc, timeout=90)
    assert rc == 0 and cluster.requeued() == ["4242"], out[-4000:]
    ckpt = load_checkpoint(str(run_dir / "checkpoints" / "last.pt"))
    assert ckpt["batch_in_epoch"] > 0 and len(ckpt["rng_per_rank"]) == 2
    rc, out = cluster.run("single_node.sbatch", *PRETRAIN, entry=entry, SLURM_GPUS_ON_NODE="2",
                          SLURM_RESTART_COUNT="1")
    assert rc == 0, out[-4000:]
    assert f"resumed from {run_dir}/checkpoints/last.pt" in out
    assert os.listdir(cluster.log_root / "slurm") == ["4242"] and (run_dir / "metrics.json").exists()
    assert cluster.requeued() == ["4242"]


# ---- ingest_array.sbatch: one shard per array task, requeued at the time-limit warning, then the merge ----
def test_ingest_array_tasks_and_the_merge_write_the_store_of_one_ingest(cluster, tmp_path):
    """Two array tasks ingest a small WFDB tree as shards 1/2 and 2/2; task 2 is stopped by the
    time-limit warning while a record blocks (its header is a FIFO), keeps its finished chunks and
    is requeued; rerun, it continues; the merge then writes the same store as one plain ingest."""
    from test_ingest import ingest_process, mimic_tree, store_files

    raw = mimic_tree(tmp_path / "raw")
    reference = tmp_path / "reference"
    proc = ingest_process(raw, reference)
    assert proc.wait(timeout=TIMEOUT) == 0, proc.communicate()
    blocked = next(raw.glob("files/**/s40000013/40000013.hea"))  # in shard 2's second chunk
    real = blocked.read_bytes()
    blocked.unlink()
    os.mkfifo(blocked)
    out = tmp_path / "mimic"
    options = ["mimic_iv_ecg", "--raw", str(raw), "--out", str(out), "--val", "0.2", "--test", "0.2", "--folds", "2",
               "--train-subsample", "0.5", "--chunk", "4"]

    def task(k, **env):
        args = ["bash", os.path.join(SCRIPTS, "ingest_array.sbatch"), *options]
        env = {**cluster.env, "SLURM_ARRAY_JOB_ID": "900", "SLURM_ARRAY_TASK_ID": str(k), "SLURM_ARRAY_TASK_COUNT": "2",
               "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "2", "SLURM_CPUS_PER_TASK": "1", **env}
        return subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)

    rc, log = cluster.finish(task(1))
    assert rc == 0, log[-3000:]
    proc = task(2)
    shard = tmp_path / "mimic.parts" / "shard_2_of_2"
    deadline = time.time() + TIMEOUT
    while not (shard / "chunk_000000.json").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    time.sleep(0.5)  # the worker now waits in the FIFO
    proc.send_signal(signal.SIGUSR1)
    rc, log = cluster.finish(proc)
    assert rc == 0 and cluster.requeued() == ["900_2"], log[-3000:]
    assert "the chunks finished so far are kept" in log
    blocked.unlink()
    blocked.write_bytes(real)
    rc, log = cluster.finish(task(2, SLURM_RESTART_COUNT="1"))
    assert rc == 0 and "1 of 3 chunk(s) of shard 2/2 are done already" in log, log[-3000:]
    merge = subprocess.run(["bash", os.path.join(SCRIPTS, "ingest_array.sbatch"), "merge", "--out", str(out), "--quiet"],
                           cwd=tmp_path, env={**cluster.env, "SLURM_JOB_ID": "901"}, capture_output=True, text=True,
                           timeout=TIMEOUT)
    assert merge.returncode == 0, merge.stderr[-3000:]
    assert store_files(out) == store_files(reference)


def test_ingest_array_refuses_an_array_that_does_not_start_at_1(cluster, tmp_path):
    args = ["bash", os.path.join(SCRIPTS, "ingest_array.sbatch"), "mimic_iv_ecg", "--raw", str(tmp_path),
            "--out", str(tmp_path / "x")]
    env = {**cluster.env, "SLURM_ARRAY_JOB_ID": "900", "SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2",
           "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "1"}
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 2 and "the array must be 1-N" in done.stderr
