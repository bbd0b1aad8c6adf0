#!/usr/bin/env bash
# Container entrypoint of the FastWan worker (Dockerfile.fastwan).
#
# 0. Started as root with RUN_AS_USER set (the image sets `worker`): creates STATE_DIR, HF_HOME and
#    LOCAL_OUTPUT_DIR and gives them to that user (Docker creates a missing bind-mount folder as root), then
#    runs again as that user, as the official database images do. Nothing else ever runs as root.
# 1. Checks the environment before anything starts (`python -m worker_app_fastwan check-settings`): one
#    line per bad or missing variable on stderr, then exit 2. Values of secrets are never printed. Then the
#    folders the worker writes: one it cannot write (a read-only mount, another user's folder root could not
#    take) is named, with the fix, in one line.
# 2. WORKER_MODE=queue (SaladCloud): runs `python -m worker_app_fastwan serve` and, when it is on PATH,
#    SaladCloud's job-queue worker binary, which POSTs jobs to http://localhost:$PORT/generate. The two are
#    supervised together: if either exits, the other is stopped and this script exits non-zero, so the
#    container restarts instead of idling half-alive. SIGTERM/SIGINT is forwarded to both; the app drains
#    (DRAIN_TIMEOUT_S) and the script exits 0 when the app did.
# 3. WORKER_MODE=buffer (Vast.ai, local box): execs `python -m worker_app_fastwan buffer`, which then gets
#    the container's signals directly.
# 4. `run_fastwan_worker.sh doctor [--load] [--generate]` (e.g. `docker run … IMAGE doctor`): execs
#    `python -m worker_app_fastwan doctor`, which checks whether this box can serve as configured.
#
# Variables of the script itself (not worker settings): PYTHON (interpreter, default python),
# SALAD_QUEUE_WORKER_BIN (default salad-http-job-queue-worker), STOP_MARGIN_S (seconds allowed past
# DRAIN_TIMEOUT_S before a process that ignores TERM gets KILL, default 15), BAKED_MODEL_PATH (a model
# folder built into the image; becomes MODEL_PATH when that is unset), RUN_AS_USER (step 0; unset: no switch).
set -euo pipefail

readonly SELF="run_fastwan_worker.sh"
SELF_PATH="$(readlink -f "${BASH_SOURCE[0]}")"
readonly SELF_PATH
PY="${PYTHON:-python}"
SALAD_BIN="${SALAD_QUEUE_WORKER_BIN:-salad-http-job-queue-worker}"

log() { printf '%s: %s\n' "$SELF" "$*" >&2; }

# The worker's own check of every setting (settings.py states each rule once): one line per problem on
# stderr, naming the variable, never a secret's value; then exit 2. Only this script's own variables are
# checked here.
validate_env() {
    local ok=0
    if [[ -n "${STOP_MARGIN_S:-}" ]] && ! [[ "$STOP_MARGIN_S" =~ ^[0-9]+$ ]]; then
        log "STOP_MARGIN_S: must be a whole number of seconds (got $(printf '%q' "${STOP_MARGIN_S:0:60}"))"
        ok=2
    fi
    "$PY" -m worker_app_fastwan check-settings || ok=2
    return "$ok"
}

# Seconds a process gets after TERM before KILL: the app's own drain time plus a margin for its exit.
stop_grace_s() {
    local drain
    # check-settings has vetted DRAIN_TIMEOUT_S as a number of seconds; rounded here for bash's arithmetic.
    drain="$(printf '%.0f' "${DRAIN_TIMEOUT_S:-120}" 2>/dev/null)" || drain=120
    [[ "$drain" =~ ^[0-9]+$ ]] || drain=120
    echo $((drain + 1 + ${STOP_MARGIN_S:-15}))
}

declare -A exit_codes=()

now_us() { echo "${EPOCHREALTIME/[.,]/}"; }

# Waits for every pid given until the deadline, KILLs what is left, and records each exit code.
wait_until_deadline() {
    local deadline=$(($(now_us) + $1 * 1000000)) pid rc
    shift
    for pid in "$@"; do
        # kill -0 fails once bash has reaped the child (it does so as soon as SIGCHLD arrives).
        while kill -0 "$pid" 2>/dev/null && (($(now_us) < deadline)); do
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid still running at the deadline: sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rc=0
        wait "$pid" || rc=$?
        exit_codes[$pid]=$rc
    done
}

# The children of queue mode, global so that the EXIT trap sees them.
pids=()

# shellcheck disable=SC2329  # called by the EXIT trap
stop_leftover_children() {
    local pid
    for pid in "${pids[@]}"; do
        if [[ -z "${exit_codes[$pid]:-}" ]] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
}

stop_requested=0
# shellcheck disable=SC2329  # called by the trap in run_queue_mode, which shellcheck does not follow
on_stop_signal() { stop_requested=1; }

run_queue_mode() {
    local names=() others=() running=() app_pid salad_pid done_pid rc i p grace
    # Trapped before anything starts, so a TERM that arrives during start-up is not lost.
    trap on_stop_signal TERM INT
    # Whatever way this script ends, it leaves no child behind (a no-op after a normal stop).
    trap stop_leftover_children EXIT

    "$PY" -m worker_app_fastwan serve &
    app_pid=$!
    names+=(app) pids+=("$app_pid")
    if command -v "$SALAD_BIN" >/dev/null 2>&1; then
        "$SALAD_BIN" &
        salad_pid=$!
        names+=("$SALAD_BIN") pids+=("$salad_pid")
        log "started the app (pid $app_pid) and $SALAD_BIN (pid $salad_pid)"
    else
        log "started the app (pid $app_pid); no $SALAD_BIN on PATH, so no SaladCloud job queue (fine off SaladCloud)"
    fi

    # `wait -n -p` (bash >= 5.1) returns when either child exits, or at once when a trapped signal arrives.
    while ((!stop_requested)); do
        rc=0
        done_pid=""
        wait -n -p done_pid "${pids[@]}" || rc=$?
        if [[ -z "${done_pid:-}" ]]; then
            continue # interrupted by a signal (wait unsets done_pid): the loop condition decides
        fi
        if ((stop_requested)); then
            # It exited just as the stop signal came: its status is already collected, keep it.
            exit_codes[$done_pid]=$rc
            break
        fi
        for i in "${!pids[@]}"; do
            if [[ "${pids[$i]}" == "$done_pid" ]]; then break; fi
        done
        log "${names[$i]} (pid $done_pid) exited with code $rc: stopping the rest"
        for p in "${pids[@]}"; do
            if [[ "$p" != "$done_pid" ]]; then others+=("$p"); fi
        done
        if ((${#others[@]} > 0)); then
            kill -TERM "${others[@]}" 2>/dev/null || true
            wait_until_deadline "$(stop_grace_s)" "${others[@]}"
        fi
        # Either one ending on its own is a failure of the pair, even with code 0.
        exit $((rc == 0 ? 1 : rc))
    done

    for p in "${pids[@]}"; do
        if [[ -z "${exit_codes[$p]:-}" ]]; then running+=("$p"); fi
    done
    grace="$(stop_grace_s)"
    log "stop signal: forwarding TERM to ${names[*]} (pids ${pids[*]}), waiting up to ${grace}s"
    if ((${#running[@]} > 0)); then
        kill -TERM "${running[@]}" 2>/dev/null || true
        wait_until_deadline "$grace" "${running[@]}"
    fi
    rc="${exit_codes[$app_pid]}"
    log "app exited with code $rc"
    exit "$rc"
}

# A model baked into the image (Dockerfile.fastwan --build-arg BAKE_MODEL=1) lives outside the cache volume,
# so that a fresh volume does not start with a 24 GB copy; it is used unless MODEL_PATH names another one.
use_baked_model() {
    local baked="${BAKED_MODEL_PATH:-}"
    if [[ -z "${MODEL_PATH:-}" && -n "$baked" && -f "$baked/model_index.json" ]]; then
        export MODEL_PATH="$baked"
        log "using the model baked into the image: MODEL_PATH=$baked"
    fi
}

# Step 0. Only what is not the user's already is changed (a model cache of thousands of files is not walked
# again at every start), links themselves and not what they point at (-h: a link in a mounted folder must not
# hand a file elsewhere to the user), and never across into another mount (-xdev). A folder that cannot be
# created or changed (read-only, root-squashed NFS) is left as it is: the settings check names it.
run_as_user() {
    local user="${RUN_AS_USER:-}" uid gid home dir
    if [[ -z "$user" || "$(id -u)" != 0 || "$user" == root ]]; then
        return 0
    fi
    if ! uid="$(id -u "$user" 2>/dev/null)"; then
        log "RUN_AS_USER=$(printf '%q' "${user:0:60}"): no such user in this image"
        exit 2
    fi
    gid="$(id -g "$user")"
    home="$(getent passwd "$user" | cut -d: -f6)"
    for dir in "${STATE_DIR:-}" "${HF_HOME:-}" "${LOCAL_OUTPUT_DIR:-}"; do
        if [[ -z "$dir" ]] || ! mkdir -p -- "$dir" 2>/dev/null; then
            continue
        fi
        find "$dir" -xdev \! -user "$uid" -exec chown -h "$uid:$gid" {} + 2>/dev/null || true
    done
    export HOME="${home:-/}" USER="$user" LOGNAME="$user"
    exec setpriv --reuid="$uid" --regid="$gid" --init-groups -- "$SELF_PATH" "$@"
}

main() {
    run_as_user "$@"
    # `doctor` reports every problem itself, one line each, so it runs before (instead of) the checks below.
    if [[ "${1:-}" == doctor ]]; then
        shift
        use_baked_model
        exec "$PY" -m worker_app_fastwan doctor "$@"
    fi
    # The baked model first: with it, the settings check does not ask for a writable model cache.
    use_baked_model
    validate_env || exit 2
    if [[ "${WORKER_MODE:-queue}" == buffer ]]; then
        exec "$PY" -m worker_app_fastwan buffer
    fi
    run_queue_mode
}

main "$@"
