#!/bin/sh
### BEGIN INIT INFO
# Provides:          hapgent
# Required-Start:    $local_fs $network $remote_fs $syslog
# Required-Stop:     $local_fs $remote_fs $syslog
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: hapgent, HAProxy agent-check daemon
# Description:       Answers HAProxy's agent-check probes from the state file
#                    /var/lib/hapgent/state.json, changed by signals and hapgent(8).
### END INIT INFO

# For hosts where systemd is not PID 1. Where it is, hapgent.service runs the agent and
# /lib/lsb/init-functions hands "/etc/init.d/hapgent ACTION" to systemctl.
# As the unit does: the user hapgent, the environment of /etc/default/hapgent and nothing else,
# the control socket in /run/hapgent, HUP to reload; but without the unit's sandbox, which only
# systemd gives. What the agent logs goes to /var/log/hapgent.log.

PATH=/usr/sbin:/usr/bin:/sbin:/bin
NAME=hapgent
DESC="HAProxy agent"
# /usr/bin/hapgent under another name: until its signal handlers exist, `pkill -USR2 hapgent`
# cannot find it (see the unit).
DAEMON=/usr/libexec/hapgent/daemon
PIDFILE=/run/hapgent.pid
RUNDIR=/run/hapgent
LOG=/var/log/hapgent.log
DEFAULTS=/etc/default/hapgent
STATE_FILE=/var/lib/hapgent/state.json

# Removed but not purged: nothing to run (status: 4, unknown).
if [ ! -x /usr/bin/hapgent ]; then
  [ "$1" = status ] && exit 4
  exit 0
fi

. /lib/lsb/init-functions

# The daemon's environment: the variables /etc/default/hapgent sets, and not those of whoever runs
# this script. The file is read by the shell here and by systemd's EnvironmentFile= under the
# unit: NAME=value lines read the same by both (see the file's head). As in the unit, the state
# file is the package's unless that file sets another.
daemon_env() {
  env -i PATH="$PATH" RUNTIME_DIRECTORY="$RUNDIR" HAPGENT_STATE_FILE="$STATE_FILE" sh -c \
    'set -a; [ ! -r "$0" ] || . "$0"; set +a; shift; exec "$@"' "$DEFAULTS" -- "$@"
}

# The process of this pid file, if it runs hapgent as the user hapgent.
running() {
  start-stop-daemon --status --quiet --pidfile "$PIDFILE" --exec /usr/bin/hapgent --user hapgent
}

# What the agent logged since offset $before of the log; all of it if the log was rotated since.
logged_since_start() {
  [ "$(stat -c %s "$LOG")" -ge "$before" ] || before=0
  tail -c "+$((before + 1))" "$LOG"
}

# Starts the agent and waits until it listens; fails, with what it logged, if it exits instead.
do_start() {
  running && return 0
  install -d -o hapgent -g hapgent -m 0750 "$RUNDIR"
  # Opened by root in a directory only root may write, appended to.
  [ -e "$LOG" ] || install -m 0640 -o root -g adm /dev/null "$LOG" 2>/dev/null ||
    install -m 0640 /dev/null "$LOG"
  before=$(stat -c %s "$LOG")
  daemon_env start-stop-daemon --start --quiet --background --make-pidfile \
    --pidfile "$PIDFILE" --chuid hapgent:hapgent --umask 022 --output "$LOG" \
    --exec /usr/bin/hapgent --startas "$DAEMON" || return 1
  tries=0
  while [ "$tries" -lt 100 ]; do
    if logged_since_start | grep -q ' listening on '; then
      return 0
    fi
    if ! running; then
      # The agent's reason, printable characters only: it reaches root's terminal.
      logged_since_start | tail -n 5 | tr -cd '[:print:]\t\n' >&2
      rm -f "$PIDFILE"
      return 1
    fi
    sleep 0.1
    tries=$((tries + 1))
  done
  echo "$NAME: not listening after 10 s, stopped; see $LOG" >&2
  do_stop
  return 1
}

# TERM saves a pending state change before exit; as the unit's TimeoutStopSec, 5 s, then KILL.
do_stop() {
  start-stop-daemon --stop --quiet --retry=TERM/5/KILL/5 --pidfile "$PIDFILE" \
    --exec /usr/bin/hapgent --user hapgent
  case $? in
    0 | 1)
      # Stopped, or not running. As systemd removes the unit's RuntimeDirectory once it stops.
      rm -rf "$PIDFILE" "$RUNDIR"
      return 0
      ;;
    *) return 1 ;; # still running after KILL, or start-stop-daemon's own trouble
  esac
}

# HUP: the agent re-reads its state file.
do_reload() {
  start-stop-daemon --stop --quiet --signal HUP --pidfile "$PIDFILE" \
    --exec /usr/bin/hapgent --user hapgent
}

case "$1" in
  start)
    log_daemon_msg "Starting $DESC" "$NAME"
    do_start
    log_end_msg $?
    ;;
  stop)
    log_daemon_msg "Stopping $DESC" "$NAME"
    do_stop
    log_end_msg $?
    ;;
  restart)
    log_daemon_msg "Restarting $DESC" "$NAME"
    do_stop && do_start
    log_end_msg $?
    ;;
  try-restart)
    if running; then
      log_daemon_msg "Restarting $DESC" "$NAME"
      do_stop && do_start
      log_end_msg $?
    fi
    ;;
  reload | force-reload)
    log_daemon_msg "Reloading $DESC" "$NAME"
    do_reload
    log_end_msg $?
    ;;
  status)
    # The LSB's codes, from the process itself: its pid, its program and its user.
    if running; then
      log_success_msg "$NAME is running"
    elif [ -e "$PIDFILE" ]; then
      log_failure_msg "$NAME is not running, but $PIDFILE exists"
      exit 1
    else
      log_failure_msg "$NAME is not running"
      exit 3
    fi
    ;;
  *)
    echo "Usage: /etc/init.d/$NAME {start|stop|restart|try-restart|reload|force-reload|status}" >&2
    exit 2
    ;;
esac
