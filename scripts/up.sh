#!/usr/bin/env bash
# Runs the whole thing on one machine: builds in release mode, starts the
# shortener (release v1) on the active slot and the proxy in front of it, and
# stops all of it on Ctrl-C.
set -euo pipefail

PROG=up
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

CONFIG=$ROOT/config/proxy.toml
RELEASE=v1
BUILD=1

usage() {
  cat <<EOF
Usage: scripts/up.sh [--config FILE] [--release LABEL] [--no-build] [--ready-timeout S]

Builds the workspace in release mode (cargo build --release), starts a
shortener (release v1, database data/links.db) on the config's active slot
(blue: 127.0.0.1:8081 in config/proxy.toml), then the proxy with
config/proxy.toml, and prints the public URL, the admin URL and where the
admin token is. Runs until Ctrl-C (or SIGTERM), then stops the proxy and every
shortener it or scripts/deploy.sh started (data/run/<slot>.pid). When another
proxy takes over (a second "proxy --config FILE" on the same data directory,
or a reload that changed what only a start reads), it follows the new process
(DATA_DIR/proxy.pid) and still stops it on Ctrl-C.

Logs: data/logs/. Works from any directory.

Options:
  --config FILE       the proxy's config (default config/proxy.toml)
  --release LABEL     the first release's label (default v1)
  --no-build          use target/release as it is
  --ready-timeout S   seconds each process gets to start listening (default 30)
  -h, --help          this help

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
  *) die "unknown argument '$1' (see --help)" ;;
  esac
done

valid_release "$RELEASE"
[[ $READY_SECONDS =~ ^[1-9][0-9]*$ ]] || die "--ready-timeout must be a positive number of seconds"
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
PY
) || die "cannot read $CONFIG"
mapfile -t cfg <<<"$config_values"
DATA_DIR=${cfg[0]}
PUBLIC=${cfg[1]}
ADMIN_ADDR=${cfg[2]}
CONFIG_TOKEN_FILE=${cfg[3]}
SLOT=${cfg[4]}
SLOT_ADDR=${cfg[5]}
[[ $SLOT == blue || $SLOT == green ]] || die "$CONFIG: slots.active must be blue or green, not '$SLOT'"

RUN_DIR=$ROOT/data/run
LOG_DIR=$ROOT/data/logs
mkdir -p "$RUN_DIR" "$LOG_DIR"

# Refuse to start next to an earlier run rather than fail half-way.
for addr in "$PUBLIC" "$ADMIN_ADDR" "$SLOT_ADDR"; do
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
  for slot in blue green; do
    [[ -f $RUN_DIR/$slot.pid ]] || continue
    IFS= read -r pid <"$RUN_DIR/$slot.pid" || true
    if is_shortener "$pid"; then
      log "stopping the shortener on $slot (pid $pid)"
      stop_pid "$pid" "the shortener on $slot"
    fi
    rm -f "$RUN_DIR/$slot.pid"
  done
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

# start_slot SLOT ADDR: start RELEASE on SLOT and wait until it listens.
start_slot() {
  local slot=$1 addr=$2
  local log_file=$LOG_DIR/shortener-$slot-$RELEASE.log
  start_shortener "$ROOT/target/release/shortener" "$addr" "$ROOT/data/links.db" "$RELEASE" "$log_file"
  local pid=$STARTED_PID
  printf '%s\n' "$pid" >"$RUN_DIR/$slot.pid"
  log "started shortener $RELEASE on $slot ($addr, pid $pid); log: $log_file"
  wait_listening "$pid" "$log_file" "shortener listening on" "$addr" "$READY_SECONDS" "the shortener on $slot"
}

start_slot "$SLOT" "$SLOT_ADDR"

PROXY_LOG=$LOG_DIR/proxy.log
setsid target/release/proxy --config "$CONFIG" </dev/null >"$PROXY_LOG" 2>&1 &
PROXY_PID=$!
printf '%s\n' "$PROXY_PID" >"$RUN_DIR/proxy.pid"
log "started the proxy (pid $PROXY_PID, config $CONFIG); log: $PROXY_LOG"
wait_listening "$PROXY_PID" "$PROXY_LOG" "public listening on" "" "$READY_SECONDS" "the proxy"
wait_listening "$PROXY_PID" "$PROXY_LOG" "admin listening on" "" "$READY_SECONDS" "the proxy"
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

cat <<EOF

  public URL:  http://$PUBLIC/
  admin URL:   http://$ADMIN_ADDR/   (GET /status, POST /switch, POST /rollback)
  admin token: $TOKEN_WHERE
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
