#!/usr/bin/env bash
# Stop the local single-node SLURM started by up.sh: slurmd, slurmctld, slurmdbd.
#
# By default munged and MariaDB are LEFT RUNNING: they are cheap, other tools
# may use munge, and keeping them up makes the next up.sh faster. Pass --all (or
# --munge / --mariadb) to stop them too: the test suite does, for those it
# started. Job state survives in /var/lib/slurm/slurmctld and the accounting
# DB, so a later up.sh resumes where this left off.
set -euo pipefail

MUNGE=0 MARIADB=0
for arg in "$@"; do
    case "$arg" in
        --all) MUNGE=1 MARIADB=1 ;;
        --munge) MUNGE=1 ;;
        --mariadb) MARIADB=1 ;;
        *) echo "usage: $0 [--all | --munge --mariadb]" >&2; exit 2 ;;
    esac
done

[[ $(id -u) -eq 0 ]] || { echo "[slurm-down] must run as root" >&2; exit 1; }

log() { echo "[slurm-down] $*" >&2; }

# any_alive <pid...>: true while at least one of the pids still exists.
any_alive() {
    local p
    for p in "$@"; do kill -0 "$p" 2>/dev/null && return 0; done
    return 1
}

# stop_daemon <name> [pidfile]: SIGTERM the daemon (pid from its pidfile, else
# the exact process name), wait up to 20s, then SIGKILL whatever is left.
stop_daemon() {
    local name="$1" pidfile="${2:-}" pids="" pid
    if [[ -n "$pidfile" && -s "$pidfile" ]]; then
        pid="$(cat "$pidfile")"
        if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]]; then
            pids="$pid"
        fi
    fi
    # Fall back to (or add) any other process with exactly this name.
    pids="$(printf '%s\n%s\n' "$pids" "$(pgrep -x "$name" || true)" | sort -u | grep . || true)"
    if [[ -z "$pids" ]]; then
        log "$name not running"
        return 0
    fi
    log "stopping $name (pid ${pids//$'\n'/ })"
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    local _
    # shellcheck disable=SC2086
    for _ in $(seq 1 100); do   # 100 x 0.2s = 20s
        any_alive $pids || break
        sleep 0.2
    done
    for pid in $pids; do
        if kill -0 "$pid" 2>/dev/null; then
            log "$name pid $pid ignored SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    [[ -n "$pidfile" ]] && rm -f "$pidfile"
    return 0
}

# Compute node first, then controller, then accounting daemon.
stop_daemon slurmd /run/slurmd.pid
stop_daemon slurmctld /run/slurmctld.pid
stop_daemon slurmdbd /run/slurmdbd.pid

if ((MARIADB)) && pgrep -x mariadbd >/dev/null 2>&1; then
    log "stopping mariadb"
    /etc/init.d/mariadb stop >/dev/null || true
    stop_daemon mariadbd
fi
((MUNGE)) && stop_daemon munged /run/munge/munged.pid

echo "SLURM down: slurmd/slurmctld/slurmdbd stopped;" \
    "mariadb $( ((MARIADB)) && echo stopped || echo 'left running')," \
    "munged $( ((MUNGE)) && echo stopped || echo 'left running')"
