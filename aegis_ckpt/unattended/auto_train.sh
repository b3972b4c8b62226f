#!/usr/bin/env bash
# Unattended training launcher (Linux, macOS): start it by hand, from cron @reboot or from a systemd unit
# (aegis-ckpt install-autostart CONFIG sets that up), walk away, come back to a finished model.
#
#   launch/auto_train.sh [CONFIG] [RETRIES] [LOG_DIR]
#
#   CONFIG    YAML config to train            env AEGIS_CONFIG       default configs/tiny.yaml
#   RETRIES   restarts in a row w/o progress  env AEGIS_RETRIES      default 5
#   LOG_DIR   folder for the log files        env AEGIS_LOG_DIR      default OUTPUT_DIR/logs (the run's)
#             first restart delay (s)         env AEGIS_BACKOFF      default 30 (doubles, at most 600)
#             no heartbeat for (s) = hung     env AEGIS_HANG_TIMEOUT default 1800
#   Arguments are relative to the current folder; variables and defaults to the project folder.
#
# The project folder is the one above this script's folder (launch/ of a checkout, or the folder
# `aegis-ckpt launcher --write DIR` wrote to).
#
# Thin on purpose: it finds Python (venv/ or .venv/ of the project, else python3 on PATH), writes everything to
# LOG_DIR/auto_training_YYYYMMDD_HHMMSS.log and turns exit codes into log lines; the checks, restarts, signal
# handling and sounds are Python (aegis-ckpt preflight / run / notify), shared with auto_train.bat. Without
# LOG_DIR the log goes next to the checkpoints, in the logs/ folder of the config's training.output_dir (Python
# reads it: aegis-ckpt launcher --log-dir CONFIG), or to logs/ of the project when the config cannot be read.
#
# Exit codes: 0 finished or already finished, 2 bad input or preflight refused, 129/130/143 stopped on request
# (run it again to continue), 1 (or another code) the supervisor gave up.

set -u

abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }

config_arg="${1:-}"
retries="${2:-${AEGIS_RETRIES:-5}}"
log_arg="${3:-}"
[ -n "$config_arg" ] && config_arg="$(abspath "$config_arg")"
[ -n "$log_arg" ] && log_arg="$(abspath "$log_arg")"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 2
config="${config_arg:-${AEGIS_CONFIG:-configs/tiny.yaml}}"
log_dir="${log_arg:-${AEGIS_LOG_DIR:-}}"
backoff="${AEGIS_BACKOFF:-30}"
hang_timeout="${AEGIS_HANG_TIMEOUT:-1800}"

# Numbers go to the supervisor's command line: digits only (a value like "5; rm -rf ~" is refused, never run).
for number in "$retries" "$backoff" "$hang_timeout"; do
  case "$number" in
    '' | *[!0-9]*)
      echo "ERROR: RETRIES (argument 2 or AEGIS_RETRIES), AEGIS_BACKOFF and AEGIS_HANG_TIMEOUT must be whole numbers of digits only (got '$number')" >&2
      exit 2
      ;;
  esac
done

# Python first: the default log folder is the run's output dir, which only Python can read from the config.
activated=""
if [ -f venv/bin/activate ]; then
  # shellcheck disable=SC1091
  . venv/bin/activate
  activated="venv/"
elif [ -f .venv/bin/activate ]; then
  # shellcheck disable=SC1091
  . .venv/bin/activate
  activated=".venv/"
fi
py=""
if command -v python3 >/dev/null 2>&1; then
  py=python3
elif command -v python >/dev/null 2>&1; then
  py=python
fi

log_note=""
if [ -z "$log_dir" ]; then
  [ -n "$py" ] && log_dir="$("$py" -m aegis_ckpt launcher --log-dir "$config" 2>/dev/null)"
  if [ -z "$log_dir" ] || ! mkdir -p "$log_dir" 2>/dev/null; then
    log_note="the run's output dir could not be read from $config or is not writable: logging to logs/ of the project"
    log_dir=logs
  fi
fi
if ! mkdir -p "$log_dir"; then
  echo "ERROR: cannot create the log folder $log_dir" >&2
  exit 2
fi
log="$(abspath "$log_dir")/auto_training_$(date +%Y%m%d_%H%M%S).log"
[ -e "$log" ] && log="${log%.log}_$$.log"

# The supervisor gets Ctrl+C and a terminal hangup itself (same process group) and passes each on once; this
# shell ignores them so that it stays to log the outcome. Set before tee starts, so tee survives them too.
trap '' INT HUP
if [ -t 1 ]; then
  exec > >(tee -a "$log") 2>&1
else
  exec >>"$log" 2>&1
fi

say() { printf '%s [auto_train] %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$*"; }

say "project: $root"
say "config: $config, retries: $retries, backoff: ${backoff} s, hang timeout: ${hang_timeout} s"
say "log: $log"
[ -n "$log_note" ] && say "$log_note"
[ -n "$activated" ] && say "activated $activated"
if [ -z "$py" ]; then
  say "ERROR: no venv/ or .venv/ in $root and no python3 on PATH: create one with"
  say "ERROR:   python3 -m venv .venv && .venv/bin/pip install -e ."
  exit 2
fi
[ -z "${VIRTUAL_ENV:-}" ] && say "no venv/ or .venv/ in $root: using $(command -v "$py")"

notify() {
  "$py" -m aegis_ckpt notify "$1" --config "$config" --message "$2" || say "(notification failed: exit $?)"
}

say "preflight"
"$py" -m aegis_ckpt preflight "$config"
rc=$?
if [ "$rc" -eq 3 ]; then
  say "already finished: nothing to do (raise training.max_steps in the config to train further)"
  exit 0
fi
if [ "$rc" -ne 0 ]; then
  say "ERROR: preflight refused to start (exit $rc): see the lines above"
  notify failed "preflight refused to start (exit $rc)"
  exit "$rc"
fi

say "training: aegis-ckpt run -- aegis-ckpt train $config"
"$py" -m aegis_ckpt run --max-restarts "$retries" --backoff "$backoff" --backoff-max 600 \
  --hang-timeout "$hang_timeout" -- "$py" -m aegis_ckpt train "$config" &
supervisor=$!
# systemd (KillMode=mixed) and kill send SIGTERM to this shell only: pass it to the supervisor, once.
trap 'kill -TERM "$supervisor" 2>/dev/null' TERM
while :; do
  wait "$supervisor"
  kill -0 "$supervisor" 2>/dev/null || break # else a trapped signal interrupted the wait
done
wait "$supervisor" # bash keeps the status of a reaped child: this is its real exit code
rc=$?

case "$rc" in
  0)
    say "FINISHED: training finished (exit 0)"
    notify finished "training finished"
    exit 0
    ;;
  129 | 130 | 143)
    say "stopped on request (exit $rc): not restarted; run this again to continue from the newest checkpoint"
    exit "$rc"
    ;;
  2)
    say "ERROR: bad input (exit 2): fix the config or command, see the lines above; not retried"
    notify failed "bad input (exit 2)"
    exit 2
    ;;
  *)
    say "ERROR: training failed and the supervisor gave up after $retries restart(s) in a row (exit $rc); the newest committed checkpoint is kept: run this again to continue"
    notify failed "gave up (exit $rc)"
    exit "$rc"
    ;;
esac
