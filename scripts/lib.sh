# shellcheck shell=bash
# Variables set here are read by the scripts that source this file:
# shellcheck disable=SC2034
# scripts/lib.sh: what up.sh, deploy.sh and canary.sh share. Sourced, never run.
#
# It owns: messages and exit, reading small JSON answers (python3, no jq), the
# admin API client (curl, token never on a command line), and the life of a
# shortener instance on a slot: its pid file, starting it detached, waiting for
# it, and stopping it only when the pid really is that shortener.

# The repository root: every default path is relative to it.
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)

# The name printed in front of every message; each script sets its own.
PROG=${PROG:-$(basename -- "$0" .sh)}

log() { printf '%s: %s\n' "$PROG" "$*"; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 1
}

# require_cmd NAME HOW: stop with an install hint when NAME is not on PATH.
require_cmd() {
  command -v "$1" >/dev/null 2>&1 || die "'$1' is needed but not installed: $2"
}

# take_value "$@": sets VALUE to the value after the option $1, or stops
# saying it is missing. Not for $( ): die must end the script itself.
take_value() {
  [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (see --help)"
  VALUE=$2
}

# abs_path PATH: PATH made absolute against the directory the script was started from.
abs_path() {
  case $1 in
  /*) printf '%s' "$1" ;;
  *) printf '%s/%s' "$START_DIR" "$1" ;;
  esac
}
START_DIR=$PWD

# json_get PATH...: reads one JSON document on stdin and prints, one line each,
# the value at every dotted PATH (e.g. slots.green.addr): strings raw, null or
# missing as an empty line, booleans as true/false, objects as compact JSON.
# Fails (status 3) when stdin is not JSON.
json_get() {
  python3 -c '
import json, sys
try:
    doc = json.load(sys.stdin)
except ValueError:
    sys.exit(3)
for path in sys.argv[1:]:
    value = doc
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    if value is None:
        print("")
    elif isinstance(value, bool):
        print("true" if value else "false")
    elif isinstance(value, (dict, list)):
        print(json.dumps(value, separators=(",", ":")))
    else:
        print(" ".join(str(value).split("\n")))
' "$@"
}

# json_fields BODY PATH...: json_get into the array FIELDS; fails when BODY is not JSON.
json_fields() {
  local body=$1
  shift
  local out
  out=$(printf '%s' "$body" | json_get "$@") || return 1
  mapfile -t FIELDS <<<"$out"
}

other_slot() {
  case $1 in
  blue) printf green ;;
  green) printf blue ;;
  *) die "unknown slot '$1' (expected blue or green)" ;;
  esac
}

# valid_release LABEL: labels become file names and JSON, so keep them plain.
valid_release() {
  [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ ]] ||
    die "release label '$1' must be letters, digits, '.', '_' or '-' (at most 64)"
}

addr_host() {
  local host=${1%:*}
  host=${host#[}
  printf '%s' "${host%]}"
}
addr_port() { printf '%s' "${1##*:}"; }

# addr_in_use ADDR: true when something accepts TCP connections on ADDR.
addr_in_use() {
  local host port
  host=$(addr_host "$1")
  port=$(addr_port "$1")
  # shellcheck disable=SC2016 # $1 and $2 are the inner shell's arguments
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null
}

# who_listens ADDR: a short description of the listener on ADDR's port, when ss can tell.
who_listens() {
  local port
  port=$(addr_port "$1")
  if command -v ss >/dev/null 2>&1; then
    ss -ltnpH "sport = :$port" 2>/dev/null |
      sed -n 's/.*users:(("\([^"]*\)",pid=\([0-9]*\).*/\1 (pid \2)/p' | head -n 1
  fi
}

# ---------------------------------------------------------------------------
# The admin API.

# ADMIN_URL, ADMIN_TOKEN, ADMIN_TOKEN_SOURCE: set by admin_init.
# ADMIN_MAX_TIME: seconds one admin request may take (a switch waits for probes).
ADMIN_MAX_TIME=${ADMIN_MAX_TIME:-60}

# admin_init URL TOKEN_FILE: TOKEN_FILE may be empty; PROXY_ADMIN_TOKEN wins,
# then TOKEN_FILE, then the token the proxy generates into data/admin.token.
admin_init() {
  ADMIN_URL=${1%/}
  local token_file=$2
  if [[ -n ${PROXY_ADMIN_TOKEN:-} ]]; then
    ADMIN_TOKEN=$PROXY_ADMIN_TOKEN
    # shellcheck disable=SC2016 # the variable's name, not its value
    ADMIN_TOKEN_SOURCE='$PROXY_ADMIN_TOKEN'
    return
  fi
  if [[ -z $token_file ]]; then
    token_file=$ROOT/data/admin.token
    [[ -r $token_file ]] ||
      die "no admin token: set PROXY_ADMIN_TOKEN or pass --token-file (the proxy started by scripts/up.sh writes it to data/admin.token)"
  fi
  [[ -r $token_file ]] || die "cannot read the admin token file $token_file"
  IFS= read -r ADMIN_TOKEN <"$token_file" || true
  ADMIN_TOKEN=${ADMIN_TOKEN%$'\r'}
  [[ -n $ADMIN_TOKEN ]] || die "the admin token file $token_file is empty"
  ADMIN_TOKEN_SOURCE=$token_file
}

# admin_request METHOD PATH [JSON]: one admin API call. Sets ADMIN_STATUS (the
# HTTP status, or 000 when there was no answer), ADMIN_BODY and ADMIN_ERROR
# (curl's complaint). Never fails: callers decide what each answer means.
admin_request() {
  local method=$1 path=$2 body=${3-}
  local out err
  out=$(mktemp)
  err=$(mktemp)
  local -a args=(-sS -X "$method" -o "$out" -w '%{http_code}'
    --connect-timeout 3 --max-time "$ADMIN_MAX_TIME")
  if [[ -n $body ]]; then
    args+=(-H 'Content-Type: application/json' --data-binary "$body")
  fi
  # The token goes through a pipe, never onto a command line that ps shows.
  ADMIN_STATUS=$(curl "${args[@]}" -H @<(printf 'Authorization: Bearer %s\n' "$ADMIN_TOKEN") \
    "$ADMIN_URL$path" 2>"$err") || ADMIN_STATUS=000
  ADMIN_BODY=$(cat "$out")
  ADMIN_ERROR=$(tr '\n' ' ' <"$err")
  ADMIN_ERROR=${ADMIN_ERROR% }
  rm -f "$out" "$err"
}

# admin_explain: a sentence for an answer no caller expects (no answer, 401, ...).
admin_explain() {
  case $ADMIN_STATUS in
  000) printf 'cannot reach the proxy admin API at %s (%s); is the proxy running? scripts/up.sh starts it' \
    "$ADMIN_URL" "${ADMIN_ERROR:-no answer}" ;;
  401 | 403) printf 'the proxy admin API at %s refused the token from %s (HTTP %s): check PROXY_ADMIN_TOKEN or --token-file' \
    "$ADMIN_URL" "$ADMIN_TOKEN_SOURCE" "$ADMIN_STATUS" ;;
  404) printf 'the proxy at %s has no such admin endpoint (HTTP 404): is --admin the admin address, and is the proxy new enough?' \
    "$ADMIN_URL" ;;
  *) printf 'the proxy admin API answered HTTP %s: %s' "$ADMIN_STATUS" "$(admin_error_text)" ;;
  esac
}

# admin_error_text: the "error" of a JSON error answer, else the raw body.
admin_error_text() {
  local text
  text=$(printf '%s' "$ADMIN_BODY" | json_get error 2>/dev/null) || text=''
  if [[ -n $text ]]; then printf '%s' "$text"; else printf '%s' "${ADMIN_BODY:0:500}"; fi
}

# print_refusal: the failure of a 409 answer, one field a line.
print_refusal() {
  local -a FIELDS=()
  if json_fields "$ADMIN_BODY" error failure.scenario failure.step failure.expected failure.got failure.member 2>/dev/null; then
    if [[ -n ${FIELDS[1]} || -n ${FIELDS[2]} ]]; then
      [[ -z ${FIELDS[5]} ]] || printf '  member:   %s\n' "${FIELDS[5]}"
      printf '  scenario: %s\n  step:     %s\n  expected: %s\n  got:      %s\n' \
        "${FIELDS[1]}" "${FIELDS[2]}" "${FIELDS[3]}" "${FIELDS[4]}"
    else
      printf '  reason: %s\n' "${FIELDS[0]:-${ADMIN_BODY:0:500}}"
    fi
  else
    printf '  answer: %s\n' "${ADMIN_BODY:0:500}"
  fi
}

# read_status: GET /status into STATUS_BODY, or stop with a clear message.
read_status() {
  admin_request GET /status
  [[ $ADMIN_STATUS == 200 ]] || die "$(admin_explain)"
  STATUS_BODY=$ADMIN_BODY
}

# status_active BODY: the active slot named by a /status answer.
status_active() {
  local -a FIELDS=()
  json_fields "$1" active || return 1
  printf '%s' "${FIELDS[0]}"
}

# ---------------------------------------------------------------------------
# Shortener instances, one per slot, each remembered in RUN_DIR/<slot>.pid.

# is_shortener PID [ADDR]: true when PID is a live process of a shortener
# binary started with "--listen ADDR" (any --listen when ADDR is empty); a pid
# file can outlive its process and the pid be reused, so nothing is ever
# stopped on the pid file's word alone.
is_shortener() {
  local pid=$1 addr=${2-}
  [[ $pid =~ ^[1-9][0-9]*$ && -r /proc/$pid/cmdline ]] || return 1
  local state
  state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null) || return 1
  [[ -n $state && $state != Z && $state != X ]] || return 1
  local -a argv=()
  mapfile -d '' -t argv <"/proc/$pid/cmdline" 2>/dev/null || return 1
  [[ ${#argv[@]} -gt 0 && $(basename -- "${argv[0]}") == *shortener* ]] || return 1
  local i
  for ((i = 1; i < ${#argv[@]}; i++)); do
    if [[ -z $addr ]]; then
      [[ ${argv[i]} == --listen* ]] && return 0
    else
      [[ ${argv[i]} == "--listen=$addr" ]] && return 0
      [[ ${argv[i]} == --listen && ${argv[i + 1]-} == "$addr" ]] && return 0
    fi
  done
  return 1
}

# pid_gone PID: true when PID has exited (a zombie counts as exited).
pid_gone() {
  [[ ! -e /proc/$1 ]] && return 0
  local state
  state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null) || return 0
  [[ -z $state || $state == Z || $state == X ]]
}

# stop_pid PID WHAT [GRACE_SECONDS]: SIGTERM, wait (bounded), then SIGKILL.
# Reaps PID when it is a child of this shell.
stop_pid() {
  local pid=$1 what=$2 grace=${3:-15}
  if pid_gone "$pid"; then
    wait "$pid" 2>/dev/null || true
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + grace))
  while ! pid_gone "$pid" && ((SECONDS < deadline)); do
    sleep 0.1
  done
  if ! pid_gone "$pid"; then
    warn "$what (pid $pid) did not stop within ${grace}s of SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 5))
    while ! pid_gone "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
  fi
  wait "$pid" 2>/dev/null || true
}

# stop_slot_instance RUN_DIR SLOT ADDR: stop the shortener that RUN_DIR/SLOT.pid
# names, if it is really a shortener listening on ADDR; forget the pid file.
stop_slot_instance() {
  local run_dir=$1 slot=$2 addr=$3
  local pid_file=$run_dir/$slot.pid pid=''
  [[ -f $pid_file ]] || return 0
  IFS= read -r pid <"$pid_file" || true
  if is_shortener "$pid" "$addr"; then
    log "stopping the shortener on $slot ($addr, pid $pid)"
    stop_pid "$pid" "the shortener on $slot"
  elif [[ -n $pid ]] && ! pid_gone "$pid"; then
    warn "$pid_file names pid $pid, which is not a shortener on $addr: left alone"
  fi
  rm -f "$pid_file"
}

# is_db_url DB: true when DB is a URL (postgres://...), not a SQLite file.
is_db_url() { [[ $1 == *://* ]]; }

# start_shortener BINARY ADDR DB RELEASE LOG [FAULT...]: start a shortener in
# its own session (so it outlives this script and a closed terminal) and set
# STARTED_PID. Its stdout and stderr go to LOG, which is truncated first.
start_shortener() {
  local binary=$1 addr=$2 db=$3 release=$4 log_file=$5
  shift 5
  local -a args=(--listen "$addr" --db "$db" --release "$release")
  local fault
  for fault in "$@"; do args+=(--fault "$fault"); done
  mkdir -p -- "$(dirname -- "$log_file")"
  is_db_url "$db" || mkdir -p -- "$(dirname -- "$db")"
  # Not a process group leader here (no job control), so setsid execs in
  # place and $! is the shortener's own pid.
  setsid "$binary" "${args[@]}" </dev/null >"$log_file" 2>&1 &
  STARTED_PID=$!
}

# wait_listening PID LOG TEXT ADDR SECONDS WHAT: wait until a line of LOG has
# TEXT (a readiness line) or, when ADDR is not empty, something answers HTTP on
# ADDR; stop with the log's tail when PID exits first or time runs out.
wait_listening() {
  local pid=$1 log_file=$2 prefix=$3 addr=$4 limit=$5 what=$6
  local deadline=$((SECONDS + limit))
  while ((SECONDS < deadline)); do
    if pid_gone "$pid"; then
      local rc=0
      wait "$pid" 2>/dev/null || rc=$?
      printf '%s: --- last lines of %s ---\n' "$PROG" "$log_file" >&2
      tail -n 20 -- "$log_file" >&2 || true
      die "$what exited (status $rc) before it was ready"
    fi
    grep -q -- "$prefix" "$log_file" 2>/dev/null && return 0
    if [[ -n $addr ]] && curl -s -o /dev/null --max-time 1 "http://$addr/healthz"; then
      return 0
    fi
    sleep 0.2
  done
  printf '%s: --- last lines of %s ---\n' "$PROG" "$log_file" >&2
  tail -n 20 -- "$log_file" >&2 || true
  die "$what was not ready within ${limit}s"
}

# ---------------------------------------------------------------------------
# What deploy.sh and canary.sh share: their common options and the start of a
# new release on the idle slot.

BINARY=$ROOT/target/release/shortener
# Empty until --db or check_release_options: the database scripts/up.sh runs
# on (RUN_DIR/db), else data/links.db.
DB=''
RELEASE=''
FAULTS=()
ADMIN=http://127.0.0.1:8099
TOKEN_FILE=''
RUN_DIR=$ROOT/data/run
LOG_DIR=''
LOG_DIR_DEFAULT=$ROOT/data/logs
READY_SECONDS=30
OVERRIDE_GUARD=0

# The options both take, for their --help.
RELEASE_OPTIONS_HELP="  --release LABEL     the new release's label (required), e.g. v2
  --binary PATH       the shortener binary to start (default target/release/shortener)
  --db PATH|URL       the shortener's database, a SQLite file or a postgres:// URL
                      (default: the one scripts/up.sh runs on, else data/links.db)
  --fault KIND        passed to the shortener as --fault KIND; repeatable
  --admin URL         the proxy's admin API (default http://127.0.0.1:8099)
  --token-file PATH   the admin token's file (default: \$PROXY_ADMIN_TOKEN, else data/admin.token)
  --run-dir DIR       where <slot>.pid files live (default data/run)
  --log-dir DIR       where shortener logs go (default data/logs, or --run-dir when that is given)
  --override-guard    try a release the guard pulled back before (sends \"override_guard\": true)
  --ready-timeout S   seconds the new shortener gets to start listening (default 30)
  --admin-timeout S   seconds one admin call may take, probes included (default 60)"

# parse_release_option "$@": consumes one common option and sets SHIFT_BY to
# how many words it took, or to 0 when $1 is not one of them.
parse_release_option() {
  SHIFT_BY=0
  case $1 in
  --override-guard)
    OVERRIDE_GUARD=1
    SHIFT_BY=1
    return 0
    ;;
  --release | --binary | --db | --fault | --admin | --token-file | --run-dir | --log-dir | \
    --ready-timeout | --admin-timeout) ;;
  *) return 0 ;;
  esac
  take_value "$@"
  SHIFT_BY=2
  case $1 in
  --release) RELEASE=$VALUE ;;
  --binary) BINARY=$(abs_path "$VALUE") ;;
  --db) if is_db_url "$VALUE"; then DB=$VALUE; else DB=$(abs_path "$VALUE"); fi ;;
  --fault) FAULTS+=("$VALUE") ;;
  --admin) ADMIN=$VALUE ;;
  --token-file) TOKEN_FILE=$(abs_path "$VALUE") ;;
  --run-dir)
    RUN_DIR=$(abs_path "$VALUE")
    LOG_DIR_DEFAULT=$RUN_DIR
    ;;
  --log-dir) LOG_DIR=$(abs_path "$VALUE") ;;
  --ready-timeout) READY_SECONDS=$VALUE ;;
  --admin-timeout) ADMIN_MAX_TIME=$VALUE ;;
  esac
}

# guard_field: what admin request bodies add for --override-guard.
guard_field() {
  if ((OVERRIDE_GUARD)); then printf ',"override_guard":true'; fi
}

# check_release_options: after parsing; stops on anything missing or wrong.
check_release_options() {
  [[ -n $RELEASE ]] || die "--release LABEL is required (see --help)"
  valid_release "$RELEASE"
  [[ -n $LOG_DIR ]] || LOG_DIR=$LOG_DIR_DEFAULT
  if [[ -z $DB && -s $RUN_DIR/db ]]; then IFS= read -r DB <"$RUN_DIR/db" || true; fi
  [[ -n $DB ]] || DB=$ROOT/data/links.db
  [[ $READY_SECONDS =~ ^[1-9][0-9]*$ ]] || die "--ready-timeout must be a positive number of seconds"
  [[ $ADMIN_MAX_TIME =~ ^[1-9][0-9]*$ ]] || die "--admin-timeout must be a positive number of seconds"
  [[ -x $BINARY ]] || die "no shortener binary at $BINARY: build it (cargo build --release) or pass --binary PATH"
  require_cmd curl "apt-get install -y curl"
  require_cmd python3 "apt-get install -y python3"
  require_cmd setsid "apt-get install -y util-linux"
  mkdir -p -- "$RUN_DIR" "$LOG_DIR"
}

# State of the new instance, read by the EXIT trap of deploy.sh and canary.sh.
# A slot that is a pool gets one shortener per member: NEW_PIDS, NEW_ADDRS and
# NEW_LOGS list them in the pool's order; NEW_PID, NEW_ADDR and NEW_LOG are the
# first member's.
NEW_PID=''
NEW_SLOT=''
NEW_ADDR=''
NEW_PIDS=()
NEW_ADDRS=()
NEW_LOGS=()
# 1 once traffic is known to be on the new instance: it must then be kept.
NEW_KEEP=0

# member_pid_file SLOT N: the pid file of member N (from 0) of SLOT: the first
# member's is RUN_DIR/SLOT.pid, as for a slot of one.
member_pid_file() {
  if (($2 == 0)); then
    printf '%s/%s.pid' "$RUN_DIR" "$1"
  else
    printf '%s/%s.%s.pid' "$RUN_DIR" "$1" "$2"
  fi
}

# slot_members BODY SLOT: the addresses of SLOT's members in a /status answer,
# one a line (its one addr when the proxy lists no members).
slot_members() {
  printf '%s' "$1" | python3 -c '
import json, sys
slot = json.load(sys.stdin)["slots"][sys.argv[1]]
for member in slot.get("members") or [{"addr": slot.get("addr")}]:
    if member.get("addr"):
        print(member["addr"])
' "$2"
}

# start_on_idle_slot: read /status, stop our old instances on the idle slot,
# start RELEASE on each of its members and wait for them. Sets ACTIVE,
# ACTIVE_RELEASE, NEW_SLOT, NEW_ADDRS, NEW_PIDS, NEW_LOGS (and NEW_ADDR, NEW_PID,
# NEW_LOG: the first member's).
start_on_idle_slot() {
  read_status
  local -a FIELDS=()
  json_fields "$STATUS_BODY" active || die "the proxy's /status is not JSON: ${STATUS_BODY:0:200}"
  ACTIVE=${FIELDS[0]}
  [[ $ACTIVE == blue || $ACTIVE == green ]] || die "the proxy's /status names no active slot: ${STATUS_BODY:0:200}"
  json_fields "$STATUS_BODY" canary.slot canary.percent
  [[ -z ${FIELDS[0]} ]] ||
    die "a canary on ${FIELDS[0]} takes ${FIELDS[1]}% of traffic: finish it first (POST $ADMIN_URL/promote or /abort)"
  NEW_SLOT=$(other_slot "$ACTIVE")
  json_fields "$STATUS_BODY" "slots.$ACTIVE.release"
  ACTIVE_RELEASE=${FIELDS[0]:-unknown}
  local -a addrs=()
  mapfile -t addrs < <(slot_members "$STATUS_BODY" "$NEW_SLOT" 2>/dev/null || true)
  ((${#addrs[@]} > 0)) || die "the proxy's /status gives no address for the idle slot $NEW_SLOT: ${STATUS_BODY:0:200}"
  local addr n
  for addr in "${addrs[@]}"; do
    [[ $addr == *:* ]] || die "the proxy's /status gives a bad address for the idle slot $NEW_SLOT: $addr"
  done
  log "active: $ACTIVE (release $ACTIVE_RELEASE); deploying $RELEASE to $NEW_SLOT (${addrs[*]})"

  for n in "${!addrs[@]}"; do
    addr=${addrs[n]}
    stop_member_instance "$NEW_SLOT" "$n" "$addr"
    if addr_in_use "$addr"; then
      local who
      who=$(who_listens "$addr")
      die "the idle slot's address $addr is in use${who:+ by $who}, by a process this script did not start: stop it, or point the slot elsewhere (PUT /slots/$NEW_SLOT)"
    fi
  done

  for n in "${!addrs[@]}"; do
    addr=${addrs[n]}
    local log_file=$LOG_DIR/shortener-$NEW_SLOT-$RELEASE.log
    ((n == 0)) || log_file=$LOG_DIR/shortener-$NEW_SLOT-$RELEASE.$n.log
    start_shortener "$BINARY" "$addr" "$DB" "$RELEASE" "$log_file" "${FAULTS[@]}"
    NEW_PIDS+=("$STARTED_PID")
    NEW_ADDRS+=("$addr")
    NEW_LOGS+=("$log_file")
    NEW_PID=${NEW_PIDS[0]}
    NEW_ADDR=${NEW_ADDRS[0]}
    NEW_LOG=${NEW_LOGS[0]}
    printf '%s\n' "$STARTED_PID" >"$(member_pid_file "$NEW_SLOT" "$n")"
    log "started shortener $RELEASE on $NEW_SLOT at $addr (pid $STARTED_PID${FAULTS[*]:+, faults: ${FAULTS[*]}}); log: $log_file"
  done
  for n in "${!NEW_ADDRS[@]}"; do
    wait_listening "${NEW_PIDS[n]}" "${NEW_LOGS[n]}" "shortener listening on" "${NEW_ADDRS[n]}" "$READY_SECONDS" "the new shortener on ${NEW_ADDRS[n]}"
    log "$RELEASE is listening on ${NEW_ADDRS[n]}"
  done
}

# stop_member_instance SLOT N ADDR: stop_slot_instance for member N of SLOT.
stop_member_instance() {
  local pid_file
  pid_file=$(member_pid_file "$1" "$2")
  if (($2 == 0)); then
    stop_slot_instance "$RUN_DIR" "$1" "$3"
  else
    stop_slot_instance "$RUN_DIR" "$(basename -- "$pid_file" .pid)" "$3"
  fi
}

# stop_new_instance: stop the instances start_on_idle_slot started, unless
# they now take traffic. Safe to call twice.
stop_new_instance() {
  [[ -n $NEW_PID && $NEW_KEEP != 1 ]] || return 0
  local n pid_file recorded
  for n in "${!NEW_PIDS[@]}"; do
    log "stopping the new instance ($RELEASE on $NEW_SLOT at ${NEW_ADDRS[n]}, pid ${NEW_PIDS[n]}); log kept: ${NEW_LOGS[n]}"
    stop_pid "${NEW_PIDS[n]}" "the new shortener"
    pid_file=$(member_pid_file "$NEW_SLOT" "$n")
    recorded=''
    [[ -f $pid_file ]] && IFS= read -r recorded <"$pid_file"
    [[ $recorded != "${NEW_PIDS[n]}" ]] || rm -f "$pid_file"
  done
  NEW_PID=''
  NEW_PIDS=()
}

# release_exit_trap: the EXIT trap of deploy.sh and canary.sh. When the script
# stops early (error, Ctrl-C) while a request that may move traffic was in
# flight, /status decides whether the new instance is kept.
release_exit_trap() {
  release_cleanup "$?"
}

# release_cleanup RC: what release_exit_trap does, then exit RC.
release_cleanup() {
  local rc=$1
  trap - EXIT INT TERM
  if [[ -n $NEW_PID && $NEW_KEEP != 1 ]]; then
    if [[ ${TRAFFIC_REQUEST_SENT:-0} == 1 ]]; then
      ADMIN_MAX_TIME=5
      admin_request GET /status
      local active=''
      [[ $ADMIN_STATUS == 200 ]] && active=$(status_active "$ADMIN_BODY" 2>/dev/null || true)
      if [[ $active == "$NEW_SLOT" ]] || [[ $ADMIN_STATUS == 200 && $(printf '%s' "$ADMIN_BODY" | json_get canary.slot 2>/dev/null) == "$NEW_SLOT" ]]; then
        warn "the proxy sends traffic to $NEW_SLOT: the new instance (pid $NEW_PID) keeps running"
        NEW_KEEP=1
      elif [[ $ADMIN_STATUS != 200 ]]; then
        warn "cannot tell whether the proxy sends traffic to $NEW_SLOT ($(admin_explain)): the new instance (pid $NEW_PID) keeps running"
        NEW_KEEP=1
      fi
    fi
    stop_new_instance
  fi
  exit "$rc"
}
