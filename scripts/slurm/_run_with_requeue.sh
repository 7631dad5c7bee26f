# shellcheck shell=bash
# Sourced by the batch scripts in this folder (not run on its own): signal forwarding and
# requeue on the time-limit warning, in one place.
#
#   run_with_requeue JOB CMD [ARG ...]
#
# runs CMD in the background and waits for it. Two signals can reach this shell:
#   SIGUSR1  the warning `#SBATCH --signal=B:USR1@300` sends 5 minutes before the time limit (to
#            this shell only). Passed on to CMD; the training writes checkpoints/last.pt at the next
#            optimizer step and exits with 75. Then the job is requeued: `scontrol requeue JOB`.
#   SIGTERM  scancel, or the end of the job. Passed on to CMD as SIGUSR1 too (srun answers a SIGTERM
#            by SIGKILLing its tasks, which would lose the checkpoint), but the job is NOT requeued:
#            a cancelled job stays cancelled. (Slurm sends SIGTERM to the job's steps as well, and
#            SIGKILL after KillWait; see README.md for which of these paths can checkpoint.)
# A requeued job keeps its job id, so the run directory pinned by the job id and resume=auto
# continue where it stopped. `scontrol requeue` answering that the job is already pending (Slurm
# requeued it itself, PreemptMode=REQUEUE) counts as success. Without the warning, CMD's exit code
# is returned unchanged (75 included) and nothing is requeued. After a signal, CMD gets
# SHUTDOWN_TIMEOUT + 30 s to exit before it is killed, so the script still ends (and requeues)
# before the time limit.
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
    if [[ $1 == USR1 ]]; then
        _rwr_warned=1
    else
        _rwr_cancelled=1
    fi
    if [[ -n $_rwr_signal ]]; then
        slurm_log "got SIG$1 too; SIG$FORWARD_SIGNAL was already sent to pid $_rwr_pid"
        return
    fi
    _rwr_signal=$1
    slurm_log "got SIG$1: sending SIG$FORWARD_SIGNAL to pid $_rwr_pid" \
              "(checkpoint at the next optimizer step, then exit $EXIT_PREEMPTED)"
    kill -s "$FORWARD_SIGNAL" "$_rwr_pid" 2>/dev/null || true
    # a deadline for CMD to exit: the script must still end, and requeue, before the time limit
    ( trap 'kill $! 2>/dev/null; exit 0' TERM
      sleep "$(( ${SHUTDOWN_TIMEOUT:-240} + 30 ))" & wait $!
      kill -KILL "$_rwr_pid" 2>/dev/null ) </dev/null >/dev/null 2>&1 &
    _rwr_deadline=$!
}

# requeue JOB; "already pending" (Slurm requeued it itself) counts as success
_rwr_requeue() {
    local answer
    if answer=$(scontrol requeue "$1" 2>&1); then
        return 0
    fi
    if [[ $answer == *[Pp]ending* ]]; then
        slurm_log "scontrol: $answer (Slurm has requeued the job already)"
        return 0
    fi
    slurm_log "scontrol requeue $1 failed: $answer"
    return 1
}

run_with_requeue() {
    local job=$1 rc previous=""
    shift
    _rwr_signal="" _rwr_pid="" _rwr_warned="" _rwr_cancelled="" _rwr_deadline=""
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
    [[ -n $_rwr_deadline ]] && kill "$_rwr_deadline" 2>/dev/null
    if [[ $rc -eq 0 ]]; then
        slurm_log "finished"
        return 0
    fi
    if [[ -n $_rwr_cancelled ]]; then
        slurm_log "stopped by SIGTERM (scancel or the end of the job; exit code $rc): not requeueing"
        return "$rc"
    fi
    if [[ -z $_rwr_warned ]]; then
        slurm_log "ended with exit code $rc without the time-limit warning; not requeueing"
        return "$rc"
    fi
    if [[ ${SLURM_RESTART_COUNT:-0} -ge $MAX_REQUEUES ]]; then
        slurm_log "stopped (exit code $rc) but already requeued ${SLURM_RESTART_COUNT} times" \
                  "(MAX_REQUEUES=$MAX_REQUEUES); not requeueing"
        return "$rc"
    fi
    slurm_log "stopped at the time-limit warning (exit code $rc): scontrol requeue $job;" \
              "it resumes from checkpoints/last.pt"
    if ! _rwr_requeue "$job"; then
        slurm_log "scontrol requeue $job failed; to resume, submit again with this job's run directory" \
                  "(hydra.run.dir=... or, for an array, hydra.sweep.dir=...) as an override"
        return "$rc"
    fi
    return 0
}
