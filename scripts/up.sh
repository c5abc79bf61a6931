#!/usr/bin/env bash
# Runs the whole thing on one machine: builds in release mode, starts the
# shortener (release v1) on the active slot and the proxy in front of it, and
# stops all of it on Ctrl-C. With --postgres, the shortener's database is a
# PostgreSQL server it starts (and stops) too.
set -euo pipefail

PROG=up
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

CONFIG=$ROOT/config/proxy.toml
RELEASE=v1
BUILD=1
POSTGRES=0
PG_PORT=55432
TLS=0
TLS_ADDR=127.0.0.1:8443

usage() {
  cat <<EOF
Usage: scripts/up.sh [--config FILE] [--release LABEL] [--tls] [--postgres] [--postgres-port PORT]
                     [--no-build] [--ready-timeout S]

Builds the workspace in release mode (cargo build --release), starts a
shortener (release v1, database data/links.db) on the config's active slot
(blue: 127.0.0.1:8081 in config/proxy.toml), then the proxy with
config/proxy.toml, and prints the public URL, the admin URL and where the
admin token is. Runs until Ctrl-C (or SIGTERM), then stops the proxy and every
shortener it or scripts/deploy.sh started (data/run/<slot>.pid). When another
proxy takes over (a second "proxy --config FILE" on the same data directory,
or a reload that changed what only a start reads), it follows the new process
(DATA_DIR/proxy.pid) and still stops it on Ctrl-C.

With --postgres the database is PostgreSQL instead: a server of Debian's
postgresql package (apt-get install -y postgresql), its cluster in
data/postgres/ (created on first use; run as the postgres user when up.sh runs
as root), listening on 127.0.0.1:PORT only, database "links"; it is stopped
last, on Ctrl-C. scripts/deploy.sh and scripts/canary.sh start their releases
on the database up.sh runs on (data/run/db).

Logs: data/logs/. Works from any directory.

Options:
  --config FILE         the proxy's config (default config/proxy.toml)
  --release LABEL       the first release's label (default v1)
  --tls                 also serve HTTPS on $TLS_ADDR: makes a self-signed ECDSA P-256
                        certificate for localhost and 127.0.0.1 under data/tls/ (kept, and
                        made again when it ends within 14 days) with openssl, and runs the
                        proxy with a copy of the config that adds listen.public_tls and the
                        certificate (data/tls/proxy.toml)
  --postgres            run the shortener on a PostgreSQL server started here
  --postgres-port PORT  that server's port on 127.0.0.1 (default 55432)
  --no-build            use target/release as it is
  --ready-timeout S     seconds each process gets to start listening (default 30)
  -h, --help            this help

Then, in another terminal:
  scripts/deploy.sh --release v2     # switch to a new release behind the probes
  scripts/canary.sh --release v2     # or roll it out step by step
EOF
}

while (($#)); do
  case $1 in
  -h | --help)
    usage
    exit 0
    ;;
  --config)
    take_value "$@"
    CONFIG=$(abs_path "$VALUE")
    shift 2
    ;;
  --release)
    take_value "$@"
    RELEASE=$VALUE
    shift 2
    ;;
  --ready-timeout)
    take_value "$@"
    READY_SECONDS=$VALUE
    shift 2
    ;;
  --no-build)
    BUILD=0
    shift
    ;;
  --postgres)
    POSTGRES=1
    shift
    ;;
  --postgres-port)
    take_value "$@"
    PG_PORT=$VALUE
    shift 2
    ;;
  --tls)
    TLS=1
    shift
    ;;
  *) die "unknown argument '$1' (see --help)" ;;
  esac
done

valid_release "$RELEASE"
[[ $READY_SECONDS =~ ^[1-9][0-9]*$ ]] || die "--ready-timeout must be a positive number of seconds"
if ! [[ $PG_PORT =~ ^[1-9][0-9]{0,4}$ ]] || ((PG_PORT > 65535)); then
  die "--postgres-port must be a port number"
fi
[[ -r $CONFIG ]] || die "cannot read the config file $CONFIG"
require_cmd curl "apt-get install -y curl"
require_cmd python3 "apt-get install -y python3"
require_cmd setsid "apt-get install -y util-linux"
((BUILD == 0)) || require_cmd cargo "install Rust with rustup (https://rustup.rs)"
cd "$ROOT"

# The config keys up.sh needs, with the proxy's defaults.
config_values=$(
  python3 - "$CONFIG" <<'PY'
import sys
try:
    import tomllib
except ImportError:
    sys.exit("python3 is older than 3.11 (no tomllib): cannot read the config")
with open(sys.argv[1], "rb") as f:
    try:
        c = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        sys.exit(f"{sys.argv[1]}: {e}")
slots = c.get("slots", {})
active = slots.get("active", "blue")
default_addr = {"blue": "127.0.0.1:8081", "green": "127.0.0.1:8082"}
print(c.get("data_dir", "data"))
print(c.get("listen", {}).get("public", "127.0.0.1:8080"))
print(c.get("listen", {}).get("admin", "127.0.0.1:8099"))
print(c.get("admin", {}).get("token_file", ""))
print(active)
print(slots.get(active, {}).get("addr", default_addr.get(active, "")))
print(c.get("listen", {}).get("public_tls", ""))
PY
) || die "cannot read $CONFIG"
mapfile -t cfg <<<"$config_values"
DATA_DIR=${cfg[0]}
PUBLIC=${cfg[1]}
ADMIN_ADDR=${cfg[2]}
CONFIG_TOKEN_FILE=${cfg[3]}
SLOT=${cfg[4]}
SLOT_ADDR=${cfg[5]}
CONFIG_TLS_ADDR=${cfg[6]:-}
[[ $SLOT == blue || $SLOT == green ]] || die "$CONFIG: slots.active must be blue or green, not '$SLOT'"

RUN_DIR=$ROOT/data/run
LOG_DIR=$ROOT/data/logs
mkdir -p "$RUN_DIR" "$LOG_DIR"

# PostgreSQL (--postgres): Debian's newest installed version; its programs run
# as the postgres user when this runs as root, since initdb refuses root.
PG_DIR=$ROOT/data/postgres
PG_CLUSTER=$PG_DIR/cluster
PG_LOG=$LOG_DIR/postgres.log
PG_BIN=''
PG_STARTED=0
as_pg() {
  if ((EUID == 0)); then runuser -u postgres -- "$@"; else "$@"; fi
}
if ((POSTGRES)); then
  pg_version=0
  for bin in /usr/lib/postgresql/*/bin; do
    version=$(basename -- "$(dirname -- "$bin")")
    [[ $version =~ ^[0-9]+$ && -x $bin/initdb && -x $bin/pg_ctl && -x $bin/psql ]] || continue
    if ((version > pg_version)); then
      PG_BIN=$bin
      pg_version=$version
    fi
  done
  [[ -n $PG_BIN ]] || die "PostgreSQL is not installed (no /usr/lib/postgresql/<version>/bin/initdb): apt-get install -y postgresql"
  ((EUID != 0)) || require_cmd runuser "apt-get install -y util-linux"
fi
if ((TLS)); then
  [[ -z $CONFIG_TLS_ADDR ]] ||
    die "$CONFIG already sets listen.public_tls ($CONFIG_TLS_ADDR): run without --tls"
  require_cmd openssl "apt-get install -y openssl"
fi

# Refuse to start next to an earlier run rather than fail half-way.
addrs=("$PUBLIC" "$ADMIN_ADDR" "$SLOT_ADDR")
((TLS == 0)) || addrs+=("$TLS_ADDR")
for addr in "${addrs[@]}"; do
  if addr_in_use "$addr"; then
    who=$(who_listens "$addr")
    die "$addr is already in use${who:+ by $who} (is scripts/up.sh already running?)"
  fi
done

if ((BUILD)); then
  log "building: cargo build --release"
  cargo build --release
fi
for bin in shortener proxy; do
  [[ -x target/release/$bin ]] || die "no target/release/$bin: run without --no-build"
done

PROXY_PID=''
# shellcheck disable=SC2317 # run by the EXIT trap
up_exit_trap() {
  local rc=$?
  trap - EXIT INT TERM
  log "stopping"
  if [[ -n $PROXY_PID ]]; then
    # The proxy drains first (shutdown_grace_ms, 10 s by default), so its
    # upstreams must still be there while it does.
    stop_pid "$PROXY_PID" "the proxy" 30
    rm -f "$RUN_DIR/proxy.pid"
  fi
  local slot pid
  # A pool's other members (deploy.sh, canary.sh) have <slot>.<n>.pid files.
  for slot in blue green $(cd "$RUN_DIR" && compgen -G '*.[0-9]*.pid' | sed 's/\.pid$//'); do
    [[ -f $RUN_DIR/$slot.pid ]] || continue
    IFS= read -r pid <"$RUN_DIR/$slot.pid" || true
    if is_shortener "$pid"; then
      log "stopping the shortener on $slot (pid $pid)"
      stop_pid "$pid" "the shortener on $slot"
    fi
    rm -f "$RUN_DIR/$slot.pid"
  done
  rm -f "$RUN_DIR/db"
  # Last: the shorteners needed it while the proxy drained.
  if ((PG_STARTED)); then
    log "stopping PostgreSQL"
    as_pg "$PG_BIN/pg_ctl" -D "$PG_CLUSTER" -m fast -w -t 30 -s stop ||
      warn "PostgreSQL did not stop cleanly (see $PG_LOG)"
  fi
  log "stopped"
  exit "$rc"
}
trap up_exit_trap EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A pid file left by a run that was killed names a process that may be gone.
for slot in blue green; do
  if [[ -f $RUN_DIR/$slot.pid ]]; then
    IFS= read -r pid <"$RUN_DIR/$slot.pid" || true
    if is_shortener "$pid"; then
      log "a shortener from an earlier run is still up on $slot (pid $pid): it will be stopped with the rest"
    else
      rm -f "$RUN_DIR/$slot.pid"
    fi
  fi
done

# start_postgres: the cluster in data/postgres (initdb on first use), started
# on 127.0.0.1:PG_PORT in its own session, with the database "links"; sets DB.
start_postgres() {
  mkdir -p "$PG_DIR"
  if ((EUID == 0)); then
    chown postgres: "$PG_DIR"
    as_pg test -w "$PG_DIR" ||
      die "the postgres user cannot write to $PG_DIR (is a parent folder private to root?): run up.sh from a folder it can reach, or as another user"
  fi
  # The server appends to it as the postgres user.
  : >>"$PG_LOG"
  ((EUID != 0)) || chown postgres: "$PG_LOG"
  if [[ ! -s $PG_CLUSTER/PG_VERSION ]]; then
    log "creating the PostgreSQL cluster in $PG_CLUSTER"
    as_pg "$PG_BIN/initdb" -D "$PG_CLUSTER" -U postgres --auth=trust --encoding=UTF8 --locale=C \
      --no-instructions >>"$PG_LOG" 2>&1 || die "initdb failed (see $PG_LOG)"
    printf "include_if_exists = 'up.conf'\n" | as_pg tee -a "$PG_CLUSTER/postgresql.conf" >/dev/null
  fi
  if as_pg "$PG_BIN/pg_ctl" -D "$PG_CLUSTER" status >/dev/null 2>&1; then
    log "a PostgreSQL from an earlier run is still up on $PG_CLUSTER: restarting it"
    as_pg "$PG_BIN/pg_ctl" -D "$PG_CLUSTER" -m fast -w -t 30 -s stop || die "cannot stop it (see $PG_LOG)"
  fi
  if addr_in_use "127.0.0.1:$PG_PORT"; then
    local who
    who=$(who_listens "127.0.0.1:$PG_PORT")
    die "127.0.0.1:$PG_PORT is already in use${who:+ by $who}: pass --postgres-port PORT"
  fi
  # The socket beside the cluster when its path fits a socket address, else TCP only.
  local socket_dir=$PG_DIR/socket
  mkdir -p "$socket_dir"
  ((EUID != 0)) || chown postgres: "$socket_dir"
  ((${#socket_dir} + 20 < 108)) || socket_dir=''
  printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\n" "$PG_PORT" "$socket_dir" |
    as_pg tee "$PG_CLUSTER/up.conf" >/dev/null
  # Its own session: a Ctrl-C here is for this script, which stops it last.
  as_pg setsid -w "$PG_BIN/pg_ctl" -D "$PG_CLUSTER" -l "$PG_LOG" -w -t "$READY_SECONDS" -s start ||
    die "PostgreSQL did not start (see $PG_LOG)"
  PG_STARTED=1
  local -a psql=("$PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres)
  if [[ -z $("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = 'links'") ]]; then
    "${psql[@]}" -c "CREATE DATABASE links" || die "cannot create the database links"
  fi
  DB="postgres://postgres@127.0.0.1:$PG_PORT/links"
  log "PostgreSQL is up on 127.0.0.1:$PG_PORT (cluster $PG_CLUSTER); log: $PG_LOG"
}

DB=$ROOT/data/links.db
if ((POSTGRES)); then
  start_postgres
fi
# The database deploy.sh and canary.sh start their releases on.
printf '%s\n' "$DB" >"$RUN_DIR/db"

# start_slot SLOT ADDR: start RELEASE on SLOT and wait until it listens.
start_slot() {
  local slot=$1 addr=$2
  local log_file=$LOG_DIR/shortener-$slot-$RELEASE.log
  start_shortener "$ROOT/target/release/shortener" "$addr" "$DB" "$RELEASE" "$log_file"
  local pid=$STARTED_PID
  printf '%s\n' "$pid" >"$RUN_DIR/$slot.pid"
  log "started shortener $RELEASE on $slot ($addr, pid $pid); log: $log_file"
  wait_listening "$pid" "$log_file" "shortener listening on" "$addr" "$READY_SECONDS" "the shortener on $slot"
}

start_slot "$SLOT" "$SLOT_ADDR"

# tls_config: a self-signed certificate under data/tls (made again when it is
# missing or ends within 14 days), and a copy of CONFIG that serves it on
# TLS_ADDR; sets CONFIG to the copy.
tls_config() {
  local dir=$ROOT/data/tls
  mkdir -p "$dir"
  chmod 700 "$dir"
  if ! openssl x509 -in "$dir/cert.pem" -noout -checkend $((14 * 86400)) >/dev/null 2>&1; then
    log "making a self-signed certificate for localhost and 127.0.0.1: $dir/cert.pem"
    (umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -days 90 -subj /CN=localhost -addext 'subjectAltName=DNS:localhost,IP:127.0.0.1' \
      -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>"$dir/openssl.log") ||
      die "openssl could not make the certificate: $(cat "$dir/openssl.log")"
  fi
  python3 - "$CONFIG" "$dir/proxy.toml" "$TLS_ADDR" "$dir/cert.pem" "$dir/key.pem" <<'PY' ||
import re, sys
src, dst, addr, cert, key = sys.argv[1:6]
text = open(src).read()
line = f'public_tls = "{addr}"\n'
# Into the [listen] table, or a new one at the end (a table at the top would
# take the root keys that follow it).
listen = re.search(r'^\[listen\][ \t]*(#.*)?\n', text, re.M)
if listen:
    text = text[:listen.end()] + line + text[listen.end():]
else:
    text += f"\n[listen]\n{line}"
text += (f'\n# Added by scripts/up.sh --tls.\n[[tls.certificate]]\n'
         f'cert = "{cert}"\nkey = "{key}"\n')
open(dst, "w").write(f"# Made by scripts/up.sh --tls from {src}.\n" + text)
PY
    die "cannot write $dir/proxy.toml"
  CONFIG=$dir/proxy.toml
}
((TLS == 0)) || tls_config

PROXY_LOG=$LOG_DIR/proxy.log
setsid target/release/proxy --config "$CONFIG" </dev/null >"$PROXY_LOG" 2>&1 &
PROXY_PID=$!
printf '%s\n' "$PROXY_PID" >"$RUN_DIR/proxy.pid"
log "started the proxy (pid $PROXY_PID, config $CONFIG); log: $PROXY_LOG"
wait_listening "$PROXY_PID" "$PROXY_LOG" "public listening on" "" "$READY_SECONDS" "the proxy"
wait_listening "$PROXY_PID" "$PROXY_LOG" "admin listening on" "" "$READY_SECONDS" "the proxy"
((TLS == 0)) || wait_listening "$PROXY_PID" "$PROXY_LOG" "public_tls listening on" "" "$READY_SECONDS" "the proxy"
# The addresses it really bound (the config may say port 0).
PUBLIC=$(grep -o 'public listening on [^[:space:]]*' "$PROXY_LOG" | head -n 1 | sed 's/.* //')
ADMIN_ADDR=$(grep -o 'admin listening on [^[:space:]]*' "$PROXY_LOG" | head -n 1 | sed 's/.* //')

# Where the admin token is, in the proxy's own order.
if [[ -n ${PROXY_ADMIN_TOKEN:-} ]]; then
  # shellcheck disable=SC2016 # the variable's name, not its value
  TOKEN_WHERE='from $PROXY_ADMIN_TOKEN'
  TOKEN_FILE=''
else
  if [[ -n $CONFIG_TOKEN_FILE ]]; then
    TOKEN_FILE=$CONFIG_TOKEN_FILE
  else
    TOKEN_FILE=$DATA_DIR/admin.token
  fi
  [[ $TOKEN_FILE == /* ]] || TOKEN_FILE=$ROOT/$TOKEN_FILE
  TOKEN_WHERE=$TOKEN_FILE
  deadline=$((SECONDS + 5))
  while [[ ! -s $TOKEN_FILE ]] && ((SECONDS < deadline)); do sleep 0.1; done
  [[ -s $TOKEN_FILE ]] || warn "the admin token file $TOKEN_FILE does not exist (see $PROXY_LOG)"
fi

# The proxy's state file (data_dir/state.json) can name the other slot as
# active after an earlier deploy: then the release goes there too, so that the
# public listener has something to send traffic to.
if [[ -n ${PROXY_ADMIN_TOKEN:-} || -s $TOKEN_FILE ]]; then
  admin_init "http://$ADMIN_ADDR" "$TOKEN_FILE"
  ADMIN_MAX_TIME=5
  admin_request GET /status
  if [[ $ADMIN_STATUS == 200 ]]; then
    active=$(status_active "$ADMIN_BODY" 2>/dev/null || true)
    if [[ ( $active == blue || $active == green ) && $active != "$SLOT" ]]; then
      json_fields "$ADMIN_BODY" "slots.$active.addr"
      active_addr=${FIELDS[0]}
      log "the proxy's saved state makes $active ($active_addr) the active slot: starting $RELEASE there too"
      if addr_in_use "$active_addr"; then
        warn "$active_addr is in use by another process: left as it is"
      else
        start_slot "$active" "$active_addr"
      fi
    fi
  else
    warn "could not read the proxy's /status: $(admin_explain)"
  fi
fi

HTTPS_LINE=''
if ((TLS)); then
  HTTPS_LINE="  https URL:   https://localhost:${TLS_ADDR##*:}/   (self-signed: curl --cacert data/tls/cert.pem)
"
fi
cat <<EOF

  public URL:  http://$PUBLIC/
$HTTPS_LINE  admin URL:   http://$ADMIN_ADDR/   (GET /status, POST /switch, POST /rollback)
  admin token: $TOKEN_WHERE
  database:    $DB
  logs:        $LOG_DIR/

  Deploy a new release from another terminal: scripts/deploy.sh --release v2
  Ctrl-C stops everything.

EOF

# is_proxy PID: true when PID is a live proxy process (a pid file can outlive
# its process and the pid be reused).
is_proxy() {
  local pid=$1
  [[ $pid =~ ^[1-9][0-9]*$ && -r /proc/$pid/cmdline ]] || return 1
  pid_gone "$pid" && return 1
  local -a argv=()
  mapfile -d '' -t argv <"/proc/$pid/cmdline" 2>/dev/null || return 1
  [[ ${#argv[@]} -gt 0 && $(basename -- "${argv[0]}") == proxy ]]
}

# successor OLD_PID: the pid of the proxy that took over from OLD_PID, from
# the pid file the serving proxy writes in its data directory; empty if none.
successor() {
  local old=$1 pid=''
  [[ -f $PROXY_PID_FILE ]] || return 0
  IFS= read -r pid <"$PROXY_PID_FILE" || true
  if [[ $pid != "$old" ]] && is_proxy "$pid"; then
    printf '%s' "$pid"
  fi
}

# Runs until a signal (the traps above) or the proxy exits on its own. A
# takeover (a second proxy on the data directory, or a reload that changed
# what only a start reads) replaces the process: the old one exits 0 once the
# new one serves, and supervision follows the new one.
[[ $DATA_DIR == /* ]] || DATA_DIR=$ROOT/$DATA_DIR
PROXY_PID_FILE=$DATA_DIR/proxy.pid
FOLLOWED=''
while :; do
  rc=0
  if [[ -z $FOLLOWED ]]; then
    wait "$PROXY_PID" || rc=$?
  else
    # Not a child of this shell: `wait` cannot reap it, but it returns at
    # once on a signal, so Ctrl-C still stops everything.
    tail --pid="$PROXY_PID" -f /dev/null &
    wait $! || true
    pid_gone "$PROXY_PID" || continue
  fi
  # The new process writes its pid file as it starts serving, which can be
  # a moment after the old one exited: a clean exit waits for it a little.
  next=$(successor "$PROXY_PID")
  deadline=$((SECONDS + 5))
  while [[ -z $next && $rc == 0 ]] && ((SECONDS < deadline)); do
    sleep 0.1
    next=$(successor "$PROXY_PID")
  done
  if [[ -n $next ]]; then
    log "the proxy (pid $PROXY_PID) handed over to pid $next: following it"
    PROXY_PID=$next
    FOLLOWED=1
    printf '%s\n' "$PROXY_PID" >"$RUN_DIR/proxy.pid"
    continue
  fi
  break
done
PROXY_PID=''
printf '%s: --- last lines of %s ---\n' "$PROG" "$PROXY_LOG" >&2
tail -n 20 -- "$PROXY_LOG" >&2 || true
die "the proxy exited by itself (status $rc)"
