# shellcheck shell=bash
# A throwaway PostgreSQL 15 cluster for tests, benchmarks and the scale-out
# demo. Source this file (bash only), then:
#
#   pg_start          start a cluster in a fresh `mktemp -d` folder, create
#                     the database image_server, export the variables below
#   pg_stop           fast shutdown, then remove the folder (safe to repeat;
#                     only ever stops the cluster this shell started)
#   pg_restart        pg_ctl restart -m fast, wait until it answers again
#   pg_createdb NAME  (re)create an empty database NAME, print its URL
#   pg_ctl_cmd ARGS   run pg_ctl on the cluster as the postgres user
#
# Exported by pg_start:
#   PG_URL      postgres://postgres@127.0.0.1:PORT/image_server
#   PG_BINDIR   folder of initdb, pg_ctl, postgres, psql, pg_isready, ...
#   PG_DIR      the temporary folder holding everything below (owned by postgres)
#   PG_DATA     $PG_DIR/data, the data directory
#   PG_SOCKDIR  $PG_DIR/sock, the Unix socket folder
#   PG_PORT     the TCP port on 127.0.0.1
#   PG_LOG      $PG_DIR/postgres.log, the server log (initdb and pg_ctl too)
#
# The server listens on 127.0.0.1 and on PG_SOCKDIR only, trusts every local
# connection (user postgres, no password), keeps fsync on (benchmarks rely on
# it; only initdb skips its syncs) and allows 300 connections. PostgreSQL
# refuses to run as root, so when called as root every server command runs
# as the postgres user (runuser). Nothing is printed on success; on failure
# the log's tail goes to stderr and the function returns non-zero. Callers set
# their own traps, for example: trap pg_stop EXIT.

# Where the server binaries are: pg_config (libpq-dev) names them; Debian's
# /usr/lib/postgresql/*/bin is the fallback (newest version first).
_pg_find_bindir() {
  local dir
  if command -v pg_config >/dev/null 2>&1; then
    dir=$(pg_config --bindir 2>/dev/null || true)
    if [[ -n $dir && -x $dir/initdb && -x $dir/pg_ctl && -x $dir/postgres ]]; then
      echo "$dir"
      return 0
    fi
  fi
  local candidates=()
  mapfile -t candidates < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -rV)
  for dir in "${candidates[@]}"; do
    if [[ -x $dir/initdb && -x $dir/pg_ctl && -x $dir/postgres ]]; then
      echo "$dir"
      return 0
    fi
  done
  echo "postgres.sh: no PostgreSQL server binaries (initdb, pg_ctl, postgres) found;" \
       "install them with: scripts/install-deps --test" >&2
  return 1
}

# Runs a server command as the postgres user when we are root, as ourselves
# otherwise. The working directory is PG_DIR so that the postgres user never
# trips over an unreadable current folder.
_pg_as_owner() {
  if [[ $(id -u) -eq 0 ]]; then
    (cd "$PG_DIR" && runuser -u postgres -- "$@")
  else
    (cd "$PG_DIR" && "$@")
  fi
}

# pg_ctl on this cluster, e.g. pg_ctl_cmd status. Its output goes to ours.
pg_ctl_cmd() {
  _pg_as_owner "$PG_BINDIR/pg_ctl" -D "$PG_DATA" "$@"
}

# A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it).
_pg_free_port() {
  python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# Prints the last lines of the log to stderr, after a message.
_pg_fail() {
  echo "postgres.sh: $*" >&2
  if [[ -n ${PG_LOG:-} && -f $PG_LOG ]]; then
    echo "--- last lines of $PG_LOG ---" >&2
    tail -n 20 "$PG_LOG" >&2
  fi
  return 1
}

# Waits until the server accepts connections on its TCP port (30 s at most).
_pg_wait_ready() {
  local i
  for ((i = 0; i < 300; i++)); do
    if "$PG_BINDIR/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres; then
      return 0
    fi
    sleep 0.1
  done
  _pg_fail "the server on port $PG_PORT is not ready after 30 s"
}

# The folder of the cluster this shell started. It is deliberately not
# exported: a child process that inherits PG_DIR (a test run under
# scripts/with-postgres that sources this file again) can start its own
# cluster, and its pg_stop never removes the parent's.
_PG_OWNED_DIR=

pg_start() {
  if [[ -n $_PG_OWNED_DIR ]]; then
    echo "postgres.sh: a cluster is already running in $_PG_OWNED_DIR (pg_stop first)" >&2
    return 1
  fi
  # A start that fails half-way leaves nothing behind (the log's tail has
  # been printed by then).
  if ! _pg_start; then
    pg_stop
    return 1
  fi
}

_pg_start() {
  PG_BINDIR=$(_pg_find_bindir) || return 1
  PG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/image-server-pg.XXXXXX") || return 1
  _PG_OWNED_DIR=$PG_DIR
  PG_DATA=$PG_DIR/data
  PG_SOCKDIR=$PG_DIR/sock
  PG_LOG=$PG_DIR/postgres.log
  PG_PORT=
  PG_URL=
  export PG_BINDIR PG_DIR PG_DATA PG_SOCKDIR PG_LOG PG_PORT PG_URL
  # (errexit is off inside a function called from `if`: check each step.)
  mkdir -p "$PG_SOCKDIR" && : >"$PG_LOG" || return 1
  if [[ $(id -u) -eq 0 ]]; then
    chown -R postgres: "$PG_DIR" || return 1
  fi

  # A new cluster: trust authentication, superuser postgres, UTF-8 with the
  # C locale (no dependency on the machine's locales). --no-sync only skips
  # initdb's own flush to disk; the running server keeps fsync=on.
  if ! _pg_as_owner "$PG_BINDIR/initdb" -D "$PG_DATA" -A trust -U postgres \
         --no-sync --encoding=UTF8 --no-locale >>"$PG_LOG" 2>&1; then
    _pg_fail "initdb failed"
    return 1
  fi

  # Our settings live in their own file, included from postgresql.conf, so a
  # retry on another port rewrites one small file. fsync is on by default;
  # it is spelled out so nobody mistakes this cluster for a tuned-down one.
  echo "include 'image-server.conf'" >>"$PG_DATA/postgresql.conf" || return 1

  # Start on a free port. Another process may grab the port between the
  # check and the bind, so a start that fails to bind is retried elsewhere.
  local attempt
  for ((attempt = 1; attempt <= 5; attempt++)); do
    PG_PORT=$(_pg_free_port) || return 1
    _pg_as_owner tee "$PG_DATA/image-server.conf" >/dev/null <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_SOCKDIR'
max_connections = 300
fsync = on
logging_collector = off
CONF
    [[ -s $PG_DATA/image-server.conf ]] || return 1
    # shellcheck disable=SC2094  # pg_ctl and the server both append to the log
    if _pg_as_owner "$PG_BINDIR/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 30 start \
         >>"$PG_LOG" 2>&1; then
      break
    fi
    if ! grep -qiE 'could not (bind|create listen)|address already in use' "$PG_LOG"; then
      _pg_fail "pg_ctl start failed"
      return 1
    fi
    echo "postgres.sh: port $PG_PORT was taken, retrying on another" >>"$PG_LOG"
    if ((attempt == 5)); then
      _pg_fail "no free port after 5 attempts"
      return 1
    fi
  done
  export PG_PORT
  _pg_wait_ready || return 1

  if ! "$PG_BINDIR/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres image_server \
         >>"$PG_LOG" 2>&1; then
    _pg_fail "createdb image_server failed"
    return 1
  fi
  export PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/image_server"
}

# The pids of postmasters running on our data directory, found by their
# command line (pg_ctl starts "BINDIR/postgres -D DATA", a restart too).
# Unlike postmaster.pid this still works when the folder is gone.
_pg_postmaster_pids() {
  local want="$PG_BINDIR/postgres -D $PG_DATA" f args
  for f in /proc/[0-9]*/cmdline; do
    mapfile -d '' -t args 2>/dev/null <"$f" || continue
    if [[ "${args[*]}" == "$want" ]]; then
      f=${f#/proc/}
      echo "${f%/cmdline}"
    fi
  done
}

pg_stop() {
  # Nothing started by this shell, or already stopped: nothing to do.
  if [[ -z $_PG_OWNED_DIR ]]; then
    return 0
  fi
  PG_DIR=$_PG_OWNED_DIR
  PG_DATA=$PG_DIR/data
  PG_LOG=$PG_DIR/postgres.log
  # Fast shutdown (rolls back open transactions, disconnects clients);
  # immediate if that hangs.
  if [[ -f $PG_DATA/postmaster.pid ]]; then
    pg_ctl_cmd -m fast -w -t 30 stop >>"$PG_LOG" 2>&1 ||
      pg_ctl_cmd -m immediate -w -t 10 stop >>"$PG_LOG" 2>&1 || true
  fi
  # Still running (pg_ctl failed, or the folder was deleted under the
  # server): signal it directly, SIGINT being a fast shutdown, SIGQUIT an
  # immediate one, then SIGKILL.
  local pids sig i
  for sig in INT QUIT KILL; do
    pids=$(_pg_postmaster_pids)
    [[ -n $pids ]] || break
    # shellcheck disable=SC2086  # one pid a word
    kill -s "$sig" $pids 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      [[ -n $(_pg_postmaster_pids) ]] || break
      sleep 0.1
    done
  done
  rm -rf "$PG_DIR"
  PG_DIR=
  _PG_OWNED_DIR=
}

pg_restart() {
  if [[ -z ${PG_DIR:-} || ! -d $PG_DIR ]]; then
    echo "postgres.sh: no cluster to restart (pg_start first)" >&2
    return 1
  fi
  # shellcheck disable=SC2094  # pg_ctl and the server both append to the log
  if ! pg_ctl_cmd -l "$PG_LOG" -m fast -w -t 30 restart >>"$PG_LOG" 2>&1; then
    _pg_fail "pg_ctl restart failed"
    return 1
  fi
  _pg_wait_ready
}

pg_createdb() {
  local name=${1:-}
  if [[ ! $name =~ ^[a-z_][a-z0-9_]*$ ]]; then
    echo "postgres.sh: pg_createdb: '$name' is not a plain database name ([a-z_][a-z0-9_]*)" >&2
    return 1
  fi
  if [[ -z ${PG_PORT:-} ]]; then
    echo "postgres.sh: no cluster (pg_start first)" >&2
    return 1
  fi
  # Fresh means empty: a database left over from an earlier call goes first.
  if ! "$PG_BINDIR/dropdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres --if-exists --force "$name" \
         >>"$PG_LOG" 2>&1 ||
     ! "$PG_BINDIR/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres "$name" >>"$PG_LOG" 2>&1; then
    _pg_fail "createdb $name failed"
    return 1
  fi
  echo "postgres://postgres@127.0.0.1:$PG_PORT/$name"
}
