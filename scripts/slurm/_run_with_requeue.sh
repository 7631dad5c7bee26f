# shellcheck shell=bash
# Sourced by the batch scripts in this folder (not run on its own): signal forwarding and
# requeue on preemption, in one place.
#
#   run_with_requeue JOB CMD [ARG ...]
#
# runs CMD in the background and waits for it. SIGUSR1 (`#SBATCH --signal=B:USR1@300`: 5 minutes
# before the time limit, to this shell only) and SIGTERM (preemption, scancel) that reach this
# shell are passed on to CMD as SIGUSR1 ($FORWARD_SIGNAL), the first one only. The training
# treats SIGUSR1 like SIGTERM (util/preemption.py): it writes checkpoints/last.pt at the next
# optimizer step and exits with 75. SIGTERM itself is not passed on because srun answers a
# SIGTERM with SIGKILL to its tasks ("srun: forcing job termination"), which would lose the
# checkpoint; on preemption SLURM sends SIGTERM to every process of the job anyway.
#
# When CMD exits with 75 (EXIT_PREEMPTED), or fails after a signal reached this shell (it may have
# been stopped before it could exit with 75; the last complete last.pt is still there), the job
# JOB is requeued with `scontrol requeue JOB` and run_with_requeue returns 0. A requeued job keeps
# its job id, so the run directory pinned by the job id and resume=auto continue where it stopped.
# Any other exit code is returned unchanged and nothing is requeued.
#
# Settings (environment): FORWARD_SIGNAL (USR1), MAX_REQUEUES (50: stop requeueing once
# SLURM_RESTART_COUNT reaches it), SHUTDOWN_TIMEOUT (240 s, see _torchrun.py).

EXIT_PREEMPTED=75
FORWARD_SIGNAL=${FORWARD_SIGNAL:-USR1}
MAX_REQUEUES=${MAX_REQUEUES:-50}
SLURM_SCRIPTS_DIR=${SLURM_SCRIPTS_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
# torchrun with SIGUSR1 forwarding and exit code 75 when preempted (see _torchrun.py)
TORCHRUN=(python "$SLURM_SCRIPTS_DIR/_torchrun.py")

slurm_log() {
    echo "[slurm $(date '+%F %T')] $*" >&2
}

# require_entry SCRIPT_NAME "$@": the batch script's first argument must be an entry point
require_entry() {
    local name=$1
    shift
    if [[ $# -lt 1 || $1 != *.py ]]; then
        echo "usage: sbatch scripts/slurm/$name ENTRY.py [override ...]" \
             "(e.g. main_pretrain.py experiment=pre_training/ecg_arrhythmia)" >&2
        exit 2
    fi
    if [[ ! -f $1 ]]; then
        echo "$name: entry point '$1' not found in $PWD (submit from the repository root or set REPO_DIR)" >&2
        exit 2
    fi
}

# a path made absolute against the current directory (every node and rank then agrees on it)
abs_path() {
    case $1 in
        /*) echo "$1" ;;
        *) echo "$PWD/$1" ;;
    esac
}

_rwr_on_signal() {  # trap handler; $1: the signal this shell got
    _rwr_interrupted=1
    if [[ -n $_rwr_signal ]]; then
        slurm_log "got SIG$1 again; SIG$FORWARD_SIGNAL was already sent to pid $_rwr_pid"
        return
    fi
    _rwr_signal=$1
    slurm_log "got SIG$1: sending SIG$FORWARD_SIGNAL to pid $_rwr_pid" \
              "(checkpoint at the next optimizer step, then exit $EXIT_PREEMPTED)"
    kill -s "$FORWARD_SIGNAL" "$_rwr_pid" 2>/dev/null || true
}

run_with_requeue() {
    local job=$1 rc previous=""
    shift
    _rwr_signal="" _rwr_pid=""
    slurm_log "job $job on $(hostname), restart ${SLURM_RESTART_COUNT:-0}: $*"
    trap '_rwr_on_signal USR1' USR1
    trap '_rwr_on_signal TERM' TERM
    "$@" &
    _rwr_pid=$!
    if [[ -n $_rwr_signal ]]; then  # a signal came between the trap and the start
        kill -s "$FORWARD_SIGNAL" "$_rwr_pid" 2>/dev/null || true
    fi
    # `wait` returns early (status > 128) when a trapped signal arrives; wait again until CMD has
    # really ended. A status already collected reads 127 on the next wait: keep the one before.
    while :; do
        _rwr_interrupted=0
        wait "$_rwr_pid" 2>/dev/null
        rc=$?
        if [[ $rc -eq 127 && -n $previous ]]; then
            rc=$previous
            break
        fi
        [[ $_rwr_interrupted -eq 1 && $rc -gt 128 ]] || break
        previous=$rc
    done
    trap - USR1 TERM
    if [[ $rc -eq 0 ]]; then
        slurm_log "finished"
        return 0
    fi
    if [[ $rc -ne $EXIT_PREEMPTED && -z $_rwr_signal ]]; then
        slurm_log "failed with exit code $rc; not requeueing"
        return "$rc"
    fi
    if [[ ${SLURM_RESTART_COUNT:-0} -ge $MAX_REQUEUES ]]; then
        slurm_log "stopped (exit code $rc) but already requeued ${SLURM_RESTART_COUNT} times" \
                  "(MAX_REQUEUES=$MAX_REQUEUES); not requeueing"
        return "$rc"
    fi
    slurm_log "preempted (exit code $rc${_rwr_signal:+ after SIG$_rwr_signal}): scontrol requeue $job;" \
              "it resumes from checkpoints/last.pt"
    if ! scontrol requeue "$job"; then
        slurm_log "scontrol requeue $job failed; to resume, submit again with this job's run directory" \
                  "(hydra.run.dir=... or, for an array, hydra.sweep.dir=...) as an override"
        return "$rc"
    fi
    return 0
}
