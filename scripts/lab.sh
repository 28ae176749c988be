#!/usr/bin/env bash
# make lab / make lab-down: the two real-Istio clusters of the demo, left
# running (tests/src/lab.rs says what the lab's directory holds).
#
#   scripts/lab.sh up    the demo (scripts/demo-istio.sh --lab), then the
#                        clusters stay up until Ctrl-C or `scripts/lab.sh down`
#   scripts/lab.sh down  stops the running lab (SIGINT to the pid in its pid
#                        file), waits until it has exited, and checks that no
#                        process of it is left and its directory is gone
#
# The lab's directory: MULTICLOUD_LAB_DIR, else /tmp/istio-multicloud-lab.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
LAB_DIR=${MULTICLOUD_LAB_DIR:-/tmp/istio-multicloud-lab}
MARKER=.istio-multicloud-lab
STOP_TIMEOUT=${LAB_STOP_TIMEOUT:-60}

# The lab's pid if it is running (not a zombie, and it is the lab).
lab_pid() {
  local pid
  pid=$(cat "$LAB_DIR/lab.pid" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q demo_istio || return 1
  [[ $(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1) != Z ]] || return 1
  echo "$pid"
}

# The processes whose command line names the lab's directory (every process
# of a lab does: the test bed's directories are in it).
leftovers() {
  pgrep -af -- "$LAB_DIR/" || true
}

down() {
  local pid deadline
  if pid=$(lab_pid); then
    log "stopping the lab (pid $pid, $LAB_DIR)"
    kill -INT "$pid"
    deadline=$((SECONDS + STOP_TIMEOUT))
    while lab_pid >/dev/null; do
      if ((SECONDS >= deadline)); then
        log "the lab did not stop within ${STOP_TIMEOUT}s of SIGINT: SIGKILL (its processes die with it)"
        kill -KILL "$pid" 2>/dev/null || true
        break
      fi
      sleep 0.1
    done
  else
    log "no lab is running in $LAB_DIR"
  fi
  if [[ -d $LAB_DIR ]]; then
    [[ -e $LAB_DIR/$MARKER ]] || die "$LAB_DIR is not a lab's directory (no $MARKER): not removing it"
    log "removing what the lab left in $LAB_DIR"
    rm -rf -- "$LAB_DIR"
  fi
  local left
  left=$(leftovers)
  if [[ -n $left ]]; then
    printf 'error: processes of the lab are still running (their command lines name %s):\n%s\n' "$LAB_DIR" "$left" >&2
    exit 1
  fi
  log "no process of the lab is left; $LAB_DIR is gone"
}

case "${1:-up}" in
  up) exec scripts/demo-istio.sh --lab ;;
  down) down ;;
  *) die "usage: scripts/lab.sh [up|down]" ;;
esac
