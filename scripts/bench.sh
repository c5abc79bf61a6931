#!/usr/bin/env bash
# Measures our proxy side by side with nginx and HAProxy on this machine:
# throughput and latency, memory with many idle keep-alive clients, what
# clients see while the admin API switches slots under load, and while each
# proxy is upgraded the way its documentation recommends. Markdown on stdout,
# progress on stderr.
set -euo pipefail

PROG=bench
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=bench/nginx.sh source-path=SCRIPTDIR
source "$(dirname -- "${BASH_SOURCE[0]}")/bench/nginx.sh"
# Progress goes to stderr: stdout is the report.
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }

BENCH_DIR=$ROOT/scripts/bench
ROUNDS=3
DURATION=10
CONNECTIONS=50
WARMUP=2
PATHS='/ /r'
PIN=1
BUILD=1
KEEP=0
HOLD=10000,50000
# Seconds the held connections stay idle before the reading: long enough for
# ours to park them (idle for a second).
HOLD_SETTLE=3
SWITCH_SECONDS=10
UPGRADES=10
UPGRADE_SECONDS=20
SECTIONS=nginx,shortener,memory,switch,tls,upgrade
BIN_DIR=$ROOT/target/release
BASELINE_HEADERS=same
# Extra builds of our proxy measured beside it, "name=/path/to/proxy" each.
COMPARE=()

usage() {
  cat <<EOF
Usage: scripts/bench.sh [options]

Benchmarks our proxy against nginx and HAProxy, all on loopback, and prints
markdown tables. Needs wrk, nginx and haproxy (Debian packages; nothing is
installed for you: apt-get install -y wrk nginx haproxy), python3, curl and
taskset.

Sections (--sections, default $SECTIONS):
  nginx      throughput and latency (requests/s, p50, p99: median over rounds,
             min..max), and each target's CPU time (user + system) per request,
             which tells a target that got less CPU from one that needed more
             (contention from other work on the machine raises it too), and
             the upstream's behind each proxy (it shares the proxy's CPU); four
             targets measured in alternation, each round
             starting one target later (A B C D, B C D A, ...):
             the upstream directly, ours, nginx (keep-alive upstream pool) and
             HAProxy (http-reuse always), in front of an nginx upstream that
             answers 200 on / and 302 on /r; one table per path (--paths);
             with the ratios ours/nginx and ours/HAProxy, of the medians and
             paired (the median of the ratios within each round, which cancels
             what a busy spell of the machine does to a whole round: prefer
             many short rounds, e.g. --rounds 15 --duration 3). Ours has switched
             once before it is measured, so both slots are vetted and every
             request is ready for a retry on the other one, as after a deploy.
  shortener  the same in front of the real shortener (GET /<code>, a 302).
  memory     each proxy's RSS (resident memory), each started afresh for each
             figure: idle (started, one request served), holding N idle client
             connections (scripts/bench/hold_conns.py: one request each, then
             held open and idle, for N in --hold), HTTP/1.1 keep-alive and
             HTTP/2 with prior knowledge, read ${HOLD_SETTLE}s after the last one is
             open; the KiB per connection that makes; and after they all close,
             the RSS once back within 20% of the idle figure (read every second,
             for at most 60s), with the seconds that took. The file limit is
             raised to fit (ulimit -n in this script; a count the hard limit
             cannot fit is skipped); every proxy's idle timeout is 300s here
             and its connection limit N plus 1,024.
  switch     wrk through our proxy in front of two shorteners (v1 on blue, v2 on
             green) while the admin API switches slots every half second; tallies
             which release answered (x-release) and every error kind
             (scripts/bench/tally.lua); four timed clients beside wrk give the
             p99 of requests around a switch against between switches
             (scripts/bench/switch_latency.py).
  tls        ours, nginx and HAProxy terminating TLS (the same self-signed ECDSA
             P-256 certificate, made with openssl; each with its default session
             resumption) in front of the nginx upstream, GET /: keep-alive
             (requests/s, p50, p99), and a new connection, so a new handshake, per
             request ("Connection: close": requests/s are handshakes/s); same
             rounds and ratios as above. wrk (OpenSSL 3) negotiates TLS 1.3
             and resumes its sessions: these handshakes are resumed ones,
             each with an X25519 exchange, and no certificate signature.
             --compare builds are not measured here.
  upgrade    wrk through each proxy (in front of the nginx upstream) while it
             is upgraded --upgrades times, as its documentation recommends:
             ours by a takeover (a second proxy on the same data directory
             takes the listening sockets over; the old one drains and exits),
             nginx by its binary upgrade (USR2 to the master, then QUIT to the
             old master), HAProxy by a master-worker reload (USR2) whose new
             worker takes the listeners over from the old one (expose-fd
             listeners); tallies every error kind and status.

Pinning: wrk (and the connection holder) on CPU 0; the proxy under test and
its upstream on CPU 1. Every proxy runs one worker thread: nginx
worker_processes 1, HAProxy nbthread 1, ours TOKIO_WORKER_THREADS=1 (and
RUST_LOG=warn, as nginx and HAProxy log nothing per request here). Every
proxy keeps idle keep-alive connections to the upstream and reuses them.

The same job (--baseline-headers same, the default): nginx and HAProxy are
configured to do what ours does to every request: set X-Forwarded-For,
X-Forwarded-Proto and X-Forwarded-Host, and add an X-Request-Id (nginx
\$request_id, HAProxy unique-id). --baseline-headers none measures them
with their default header handling instead.

Options:
  --rounds N          rounds of A B C D (default $ROUNDS)
  --duration S        seconds of one wrk run (default $DURATION)
  --connections N     wrk connections (default $CONNECTIONS)
  --warmup S          seconds of an unmeasured run per target first (default $WARMUP; 0: none)
  --paths "P..."      paths measured in front of nginx (default "$PATHS")
  --sections LIST     which sections, comma-separated (default $SECTIONS)
  --hold N,...        client connections held for the memory section (default $HOLD)
  --switch-seconds S  length of the switch-under-load run (default $SWITCH_SECONDS)
  --upgrades N        upgrades of each proxy in the upgrade run (default $UPGRADES)
  --upgrade-seconds S length of each proxy's upgrade run (default $UPGRADE_SECONDS)
  --no-pin            do not pin anything to a CPU
  --no-build          use target/release as it is (default: cargo build --release first)
  --bin-dir DIR       take proxy and shortener from DIR, not target/release (implies --no-build)
  --baseline-headers same|none
                      what nginx and HAProxy do to the headers (default $BASELINE_HEADERS)
  --compare NAME=BIN  also measure another build of our proxy (e.g. before=/tmp/old/proxy)
                      beside the others, in the same rounds; repeatable
  --keep              keep the temporary directory (configs, logs)
  -h, --help          this help

Takes about rounds x targets x (duration + a few s) per table: ~3 minutes per
table with the defaults.
EOF
}

while (($#)); do
  case $1 in
  -h | --help)
    usage
    exit 0
    ;;
  --rounds | --duration | --connections | --warmup | --paths | --sections | --hold | --switch-seconds | --upgrades | --upgrade-seconds | --bin-dir | --baseline-headers | --compare)
    take_value "$@"
    case $1 in
    --rounds) ROUNDS=$VALUE ;;
    --duration) DURATION=$VALUE ;;
    --connections) CONNECTIONS=$VALUE ;;
    --warmup) WARMUP=$VALUE ;;
    --paths) PATHS=$VALUE ;;
    --sections) SECTIONS=$VALUE ;;
    --hold) HOLD=$VALUE ;;
    --switch-seconds) SWITCH_SECONDS=$VALUE ;;
    --upgrades) UPGRADES=$VALUE ;;
    --upgrade-seconds) UPGRADE_SECONDS=$VALUE ;;
    --bin-dir)
      BIN_DIR=$(abs_path "$VALUE")
      BUILD=0
      ;;
    --baseline-headers) BASELINE_HEADERS=$VALUE ;;
    --compare) COMPARE+=("$VALUE") ;;
    esac
    shift 2
    ;;
  --no-pin)
    PIN=0
    shift
    ;;
  --no-build)
    BUILD=0
    shift
    ;;
  --keep)
    KEEP=1
    shift
    ;;
  *) die "unknown argument '$1' (see --help)" ;;
  esac
done

for n in ROUNDS DURATION CONNECTIONS SWITCH_SECONDS UPGRADES UPGRADE_SECONDS; do
  [[ ${!n} =~ ^[1-9][0-9]*$ ]] || die "--$(tr 'A-Z_' 'a-z-' <<<"$n") must be a positive whole number"
done
[[ $WARMUP =~ ^[0-9]+$ ]] || die "--warmup must be a whole number of seconds"
[[ $HOLD =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || die "--hold must be positive whole numbers, comma-separated"
HOLD_MAX=0
for n in ${HOLD//,/ }; do ((n > HOLD_MAX)) && HOLD_MAX=$n; done
for section in ${SECTIONS//,/ }; do
  case $section in
  nginx | shortener | memory | switch | tls | upgrade) ;;
  *) die "unknown section '$section' (nginx, shortener, memory, switch, tls, upgrade)" ;;
  esac
done
want() { [[ ,$SECTIONS, == *,$1,* ]]; }
case $BASELINE_HEADERS in
same | none) ;;
*) die "--baseline-headers must be 'same' or 'none'" ;;
esac
COMPARE_NAMES=()
COMPARE_BINS=()
for entry in "${COMPARE[@]}"; do
  name=${entry%%=*} bin=${entry#*=}
  [[ $entry == *=* && $name =~ ^[a-z][a-z0-9_-]{0,15}$ ]] ||
    die "--compare takes NAME=BIN with a short lower-case NAME, not '$entry'"
  case $name in
  upstream | ours | nginx | haproxy) die "--compare: '$name' is taken by a built-in target" ;;
  esac
  bin=$(abs_path "$bin")
  [[ -x $bin ]] || die "--compare: no executable $bin"
  COMPARE_NAMES+=("$name")
  COMPARE_BINS+=("$bin")
done

# Nothing is installed silently: say what is missing and how to get it.
missing=()
for cmd in wrk nginx haproxy; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
((${#missing[@]} == 0)) ||
  die "missing: ${missing[*]}. Install with: apt-get install -y ${missing[*]}"
require_cmd python3 "apt-get install -y python3"
require_cmd curl "apt-get install -y curl"
require_cmd taskset "apt-get install -y util-linux"
! want tls || require_cmd openssl "apt-get install -y openssl"
require_cmd ps "apt-get install -y procps"

if ((PIN)) && (($(nproc) < 2)); then
  log "only $(nproc) CPU: not pinning"
  PIN=0
fi
if ((PIN)); then
  PIN_LOAD=(taskset -c 0)
  PIN_SERVER=(taskset -c 1)
else
  PIN_LOAD=()
  PIN_SERVER=()
fi

# The held connections need a descriptor each, in the holder and in the
# proxy: raised here, for this script and what it starts, not in the system
# (root may raise the hard limit too; anyone else up to it).
FILES=$((HOLD_MAX + 16384 > 65536 ? HOLD_MAX + 16384 : 65536))
ulimit -n "$FILES" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FILE_LIMIT=$(ulimit -n)
# What a proxy needs beside its clients: its listeners, logs, upstream
# connections.
FILE_MARGIN=512

if ((BUILD)); then
  log "cargo build --release -p proxy -p shortener"
  (cd "$ROOT" && cargo build --release -p proxy -p shortener) >&2
fi
PROXY_BIN=$BIN_DIR/proxy
SHORTENER_BIN=$BIN_DIR/shortener
for bin in "$PROXY_BIN" "$SHORTENER_BIN"; do
  [[ -x $bin ]] || die "no $bin: build it (cargo build --release) or drop --no-build"
done

# Other work on the machine skews every figure: the report gives the load.
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench.XXXXXX")
RESULTS=$WORK/results.tsv
TITLES=$WORK/titles.tsv
: >"$RESULTS"
: >"$TITLES"
TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
printf '%s\n' "$TOKEN" >"$WORK/admin.token"
chmod 600 "$WORK/admin.token"

# Every process this script starts, by pid, stopped by the EXIT trap.
PIDS=()
# shellcheck disable=SC2317 # run by the EXIT trap
bench_exit_trap() {
  local rc=$?
  trap - EXIT INT TERM
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    stop_pid "${PIDS[i]}" "pid ${PIDS[i]}" 10
  done
  if ((KEEP)); then
    log "kept $WORK"
  else
    rm -rf -- "$WORK"
  fi
  exit "$rc"
}
trap bench_exit_trap EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# forget_pid PID: stop PID now and drop it from PIDS (a pid can be reused).
forget_pid() {
  local pid=$1 i
  stop_pid "$pid" "pid $pid" 10
  for i in "${!PIDS[@]}"; do
    [[ ${PIDS[i]} != "$pid" ]] || unset 'PIDS[i]'
  done
  PIDS=("${PIDS[@]}")
}

mapfile -t PORTS < <(free_ports $((14 + 3 * ${#COMPARE[@]} + 5)))
UPSTREAM_PORT=${PORTS[0]}
OURS_PORT=${PORTS[1]}
OURS_ADMIN_PORT=${PORTS[2]}
NGINX_PORT=${PORTS[3]}
HAPROXY_PORT=${PORTS[4]}
V1_PORT=${PORTS[5]}
V2_PORT=${PORTS[6]}
SWITCH_PORT=${PORTS[7]}
SWITCH_ADMIN_PORT=${PORTS[8]}
STATUS_PORT=${PORTS[9]}
SWITCH_STATUS_PORT=${PORTS[10]}
OURS_TLS_PORT=${PORTS[11]}
# What the tls section changes for every target: https URLs, extra wrk
# arguments (Connection: close), and our proxy's TLS listener and certificate.
SCHEME=http
WRK_EXTRA=()
OURS_LISTEN_EXTRA=''
OURS_TABLES_EXTRA=''
TLS_DIR=$WORK/tls
# The upgrade section's, after those of the --compare builds.
UPGRADE_PORTS=("${PORTS[@]: -5}")
# HTTP/2 with prior knowledge in the memory section: nginx and HAProxy on a
# port of its own.
NGINX_H2_PORT=${PORTS[12]}
HAPROXY_H2_PORT=${PORTS[13]}

# The memory section's settings of every proxy (empty: the defaults): its
# connection limit and idle timeout in seconds; nginx and HAProxy then also
# take HTTP/2 with prior knowledge on the ports above.
MEM_CONNS=''
MEM_IDLE_S=300

# wait_port ADDR PID WHAT: wait (bounded) until ADDR accepts connections.
wait_port() {
  local addr=$1 pid=$2 what=$3
  local deadline=$((SECONDS + 15))
  while ((SECONDS < deadline)); do
    pid_gone "$pid" && die "$what exited at start (logs in $WORK; rerun with --keep to read them)"
    addr_in_use "$addr" && return 0
    sleep 0.1
  done
  die "$what did not listen on $addr within 15s"
}

# start_server LOG CMD...: start CMD pinned to the server CPU; sets BG_PID.
start_server() {
  local log_file=$1
  shift
  "${PIN_SERVER[@]}" "$@" </dev/null >"$log_file" 2>&1 &
  BG_PID=$!
  PIDS+=("$BG_PID")
}


# start_nginx NAME: run the config $WORK/NAME/nginx.conf; sets BG_PID.
start_nginx() {
  local dir=$WORK/$1
  start_server "$dir/stderr.log" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
}

# start_upstream_nginx PORT: the upstream: 200 with a small body on /, a 302
# on /r (like a shortener redirect), and a /healthz our proxy's probe passes.
start_upstream_nginx() {
  local dir=$WORK/upstream
  mkdir -p "$dir"
  upstream_nginx_conf "$dir" "$1" >"$dir/nginx.conf"
  start_nginx upstream
  UPSTREAM_PID=$BG_PID
  wait_port "127.0.0.1:$1" "$BG_PID" "the upstream nginx"
}

# start_nginx_proxy PORT UPSTREAM_ADDR [tls]: nginx as a reverse proxy, with a
# keep-alive pool to the upstream; with "tls", its listener terminates TLS
# with the certificate of TLS_DIR.
start_nginx_proxy() {
  local dir=$WORK/nginx-proxy ssl='' ssl_conf=''
  if [[ ${3:-} == tls ]]; then
    ssl=' ssl'
    # Its default resumption (session tickets), as each proxy here.
    ssl_conf="    ssl_certificate $TLS_DIR/cert.pem;
    ssl_certificate_key $TLS_DIR/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;"
  fi
  mkdir -p "$dir"
  {
    NGINX_WORKER_CONNECTIONS=${MEM_CONNS:-8192} nginx_common "$dir"
    cat <<EOF
http {
$(nginx_temp_paths "$dir")
$(if [[ -n $MEM_CONNS ]]; then echo "  keepalive_timeout ${MEM_IDLE_S}s;"; fi)
  upstream backend {
    server $2;
    # An idle connection for every client connection: none is ever closed.
    keepalive $((CONNECTIONS > 64 ? CONNECTIONS : 64));
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$1$ssl backlog=4096;
$ssl_conf
$(if [[ -n $MEM_CONNS ]]; then echo "    listen 127.0.0.1:$NGINX_H2_PORT http2 backlog=4096;"; fi)
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
$(if [[ $BASELINE_HEADERS == same ]]; then
    cat <<'NGINX'
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Request-Id $request_id;
      add_header X-Request-Id $request_id always;
NGINX
  fi)
    }
  }
}
EOF
  } >"$dir/nginx.conf"
  start_nginx nginx-proxy
  NGINX_PID=$BG_PID
  wait_port "127.0.0.1:$1" "$BG_PID" "nginx (proxy)"
}

# start_haproxy PORT UPSTREAM_ADDR [tls]: HAProxy, one thread, reusing upstream
# connections across clients; with "tls", its listener terminates TLS with the
# certificate of TLS_DIR.
start_haproxy() {
  local dir=$WORK/haproxy bind_ssl='' proto=http
  if [[ ${3:-} == tls ]]; then
    # Its default resumption (session cache and tickets), as each proxy here.
    bind_ssl=" ssl crt $TLS_DIR/combined.pem ssl-min-ver TLSv1.2"
    # shellcheck disable=SC2034 # read in the heredoc of the config below
    proto=https
  fi
  local client_timeout=60s
  [[ -n $MEM_CONNS ]] && client_timeout=${MEM_IDLE_S}s
  mkdir -p "$dir"
  cat >"$dir/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn ${MEM_CONNS:-5000}
$(if [[ -n $MEM_CONNS ]]; then
    # It sizes for two descriptors per connection (client and server side);
    # idle clients need one, so a file limit below that is no reason to stop.
    echo "  no strict-limits"
  fi)

defaults
  mode http
  timeout connect 1s
  timeout client $client_timeout
  timeout server 60s
  option http-keep-alive
  http-reuse always

frontend public
  bind 127.0.0.1:$1$bind_ssl
$(if [[ -n $MEM_CONNS ]]; then echo "  bind 127.0.0.1:$HAPROXY_H2_PORT proto h2"; fi)
  default_backend upstream
$(if [[ $BASELINE_HEADERS == same ]]; then
    cat <<HAPROXY
  option forwardfor
  http-request set-header X-Forwarded-Proto $proto
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  unique-id-format %[uuid()]
  unique-id-header X-Request-Id
  http-after-response set-header X-Request-Id %[unique-id]
HAPROXY
  fi)

backend upstream
  server upstream $2
EOF
  start_server "$dir/haproxy.log" haproxy -db -f "$dir/haproxy.cfg"
  HAPROXY_PID=$BG_PID
  wait_port "127.0.0.1:$1" "$BG_PID" "HAProxy"
}

# start_ours NAME PORT ADMIN_PORT STATUS_PORT BLUE GREEN SCENARIOS [BIN]: our
# proxy (BIN, default the one built) with a generated config (data in
# $WORK/NAME); sets BG_PID.
start_ours() {
  local name=$1 port=$2 admin_port=$3 status_port=$4 blue=$5 green=$6 scenarios=$7
  local bin=${8:-$PROXY_BIN}
  local dir=$WORK/$name
  mkdir -p "$dir"
  {
    cat <<EOF
# Generated by scripts/bench.sh.
data_dir = "$dir/data"

[listen]
public = "127.0.0.1:$port"
admin = "127.0.0.1:$admin_port"
status = "127.0.0.1:$status_port"
$OURS_LISTEN_EXTRA

[slots]
active = "blue"

[slots.blue]
addr = "$blue"

[slots.green]
addr = "$green"

$OURS_TABLES_EXTRA
EOF
    cat "$scenarios"
    if [[ -n $MEM_CONNS ]]; then
      printf '\n[limits]\nmax_connections = %s\nidle_timeout_ms = %s\n' "$MEM_CONNS" "$((MEM_IDLE_S * 1000))"
    fi
  } >"$dir/proxy.toml"
  PROXY_ADMIN_TOKEN=$TOKEN TOKIO_WORKER_THREADS=1 RUST_LOG=${BENCH_RUST_LOG:-warn} \
    start_server "$dir/proxy.log" "$bin" --config "$dir/proxy.toml"
  wait_listening "$BG_PID" "$dir/proxy.log" "public listening on" "" 30 "our proxy ($name)"
}

# switch_to ADMIN_PORT SLOT: one switch through the admin API (it runs the
# gate first), so the slot switched away from stays vetted for retries.
switch_to() {
  local code
  code=$(curl -s -o "$WORK/switch.out" -w '%{http_code}' --max-time 60 -X POST \
    -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    --data "{\"to\":\"$2\"}" "http://127.0.0.1:$1/switch") || code=000
  [[ $code == 200 ]] || die "switch to $2 answered $code: $(cat "$WORK/switch.out" 2>/dev/null)"
}

# The probe our proxy runs in front of nginx: nginx's /healthz passes it.
HEALTH_SCENARIO=$BENCH_DIR/health-scenario.toml
# In front of shorteners: the reference config's scenarios, as in production.
SHORTENER_SCENARIOS=$WORK/shortener-scenarios.toml
sed -n '/^\[\[scenario\]\]/,$p' "$ROOT/config/proxy.toml" >"$SHORTENER_SCENARIOS"

# start_bench_shortener PORT RELEASE: a shortener on the server CPU; sets BG_PID.
start_bench_shortener() {
  local port=$1 release=$2
  local log_file=$WORK/shortener-$release.log
  TOKIO_WORKER_THREADS=1 RUST_LOG=${BENCH_RUST_LOG:-warn} start_server "$log_file" \
    "$SHORTENER_BIN" --listen "127.0.0.1:$port" --db "$WORK/links.db" --release "$release"
  wait_listening "$BG_PID" "$log_file" "shortener listening on" "" 30 "shortener $release"
}

# The process of each measured target (TARGET_PID[name]), for its CPU time
# per request: a round that lost CPU to another tenant shows fewer requests
# per second at the same CPU per request; a costlier build shows more.
declare -A TARGET_PID=()
CLK_TCK=$(getconf CLK_TCK)

# cpu_ticks PID: user + system clock ticks of PID and its child processes
# (nginx's worker is the master's child), so far.
cpu_ticks() {
  local total=0 pid fields
  for pid in "$1" $(pgrep -P "$1" 2>/dev/null); do
    # Fields 14 and 15 of /proc/PID/stat; the command name (2) has no spaces here.
    fields=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null) || continue
    total=$((total + fields))
  done
  printf '%s' "$total"
}

# run_wrk TABLE TARGET ROUND URL: one measured wrk run, appended to RESULTS.
run_wrk() {
  local table=$1 target=$2 round=$3 url=$4 out
  local pid=${TARGET_PID[$target]:-} before=0 after=0
  # The upstream's CPU behind a proxy: a proxy that makes its upstream work
  # harder (more connections, smaller reads) costs the shared CPU too.
  local up_pid=${TARGET_PID[upstream]:-} up_before=0 up_after=0
  [[ $target == upstream ]] && up_pid=''
  [[ -n $pid ]] && before=$(cpu_ticks "$pid")
  [[ -n $up_pid ]] && up_before=$(cpu_ticks "$up_pid")
  out=$(timeout $((DURATION + 30)) "${PIN_LOAD[@]}" wrk -t1 -c "$CONNECTIONS" -d "${DURATION}s" \
    "${WRK_EXTRA[@]}" -s "$BENCH_DIR/report.lua" "$url" 2>&1) || die "wrk failed against $target ($url): $out"
  [[ -n $pid ]] && after=$(cpu_ticks "$pid")
  [[ -n $up_pid ]] && up_after=$(cpu_ticks "$up_pid")
  local line
  line=$(grep '^BENCH ' <<<"$out") || die "no result line from wrk against $target: $out"
  python3 - "$table" "$target" "$round" "$line" "$((after - before))" "$CLK_TCK" "$pid" \
    "$((up_after - up_before))" "$up_pid" >>"$RESULTS" <<'PY'
import sys
table, target, rnd, line, ticks, clk_tck, pid, up_ticks, up_pid = sys.argv[1:10]
f = dict(kv.split("=") for kv in line.split()[1:])
errors = sum(int(f[k]) for k in ("connect", "read", "write", "timeout", "status"))
requests = int(f["requests"])


def per_request(ticks, known):
    return f"{int(ticks) * 1e6 / int(clk_tck) / requests:.2f}" if known and requests else ""


fields = [table, target, rnd, f["rps"], f["p50_us"], f["p99_us"], str(errors)]
print("\t".join(fields + [per_request(ticks, pid), per_request(up_ticks, up_pid)]))
PY
  log "  $target: ${line#BENCH }"
}

# measure TABLE TITLE PATH NAME=ADDR...: warm up each target, then ROUNDS
# rounds of all targets in turn.
measure() {
  local table=$1 title=$2 path=$3
  shift 3
  printf '%s\t%s\n' "$table" "$title" >>"$TITLES"
  local target
  if ((WARMUP > 0)); then
    log "$title: warm-up, ${WARMUP}s per target"
    for target in "$@"; do
      timeout $((WARMUP + 30)) "${PIN_LOAD[@]}" wrk -t1 -c "$CONNECTIONS" -d "${WARMUP}s" \
        "${WRK_EXTRA[@]}" "$SCHEME://${target#*=}$path" >/dev/null 2>&1 || die "warm-up failed against ${target%%=*}"
    done
  fi
  # Each round starts one target later (A B C D, then B C D A, ...): the run
  # right after the upstream's own (the busiest for CPU 1) is not always the
  # same target's.
  local targets=("$@") round i
  for ((round = 1; round <= ROUNDS; round++)); do
    log "$title: round $round/$ROUNDS"
    for ((i = 0; i < ${#targets[@]}; i++)); do
      target=${targets[(i + round - 1) % ${#targets[@]}]}
      run_wrk "$table" "${target%%=*}" "$round" "$SCHEME://${target#*=}$path"
      sleep 1
    done
  done
}

# rss_kb PID: resident memory of PID and its children (nginx's workers), in KiB.
rss_kb() {
  ps -o rss= -p "$1" --ppid "$1" | awk '{ s += $1 } END { print s + 0 }'
}

# mib KIB: KiB as MiB with one decimal.
mib() { awk -v kb="$1" 'BEGIN { printf "%.1f", kb / 1024 }'; }

MEMORY_ROWS=()
# hold_and_measure NAME PID ADDR PROTOCOL COUNT: RSS of PID (a proxy just
# started, nothing else asked of it yet) idle, while COUNT client connections
# of PROTOCOL (http1 or h2) are held open and idle on ADDR, and after they are
# closed: a row of MEMORY_ROWS.
hold_and_measure() {
  local name=$1 pid=$2 addr=$3 protocol=$4 count=$5
  local out=$WORK/hold-$name-$protocol-$count.out flag=()
  [[ $protocol == h2 ]] && flag=(--http2)
  # Idle: once one request has been served, as every proxy in service has;
  # the first request initializes what every later one shares.
  python3 "$BENCH_DIR/hold_conns.py" "$(addr_host "$addr")" "$(addr_port "$addr")" \
    --count 1 "${flag[@]}" --seconds 0 </dev/null >/dev/null 2>&1 ||
    die "a first request to $name ($protocol) failed"
  sleep 1
  local idle
  idle=$(rss_kb "$pid")
  : >"$out"
  "${PIN_LOAD[@]}" python3 "$BENCH_DIR/hold_conns.py" "$(addr_host "$addr")" "$(addr_port "$addr")" \
    --count "$count" "${flag[@]}" --seconds 900 --open-timeout 300 </dev/null >"$out" 2>&1 &
  local holder=$!
  PIDS+=("$holder")
  local deadline=$((SECONDS + 330))
  while ! grep -q '^held ' "$out" && ((SECONDS < deadline)); do
    pid_gone "$holder" && break
    sleep 0.5
  done
  grep -q '^held ' "$out" || die "could not open $count connections to $name: $(cat "$out")"
  local opened failed
  read -r _ opened _ failed _ <"$out"
  ((failed == 0)) || log "  $name: $failed of $count connections failed: $(head -c 300 "$out")"
  sleep "$HOLD_SETTLE"
  local held_kb
  held_kb=$(rss_kb "$pid")
  forget_pid "$holder"
  # Back within 20% of idle, read every second for at most a minute.
  local closed_at=$SECONDS after waited
  while :; do
    sleep 1
    after=$(rss_kb "$pid")
    waited=$((SECONDS - closed_at))
    ((after * 10 <= idle * 12 || waited >= 60)) && break
  done
  local per_conn back
  per_conn=$(awk -v a="$idle" -v b="$held_kb" -v n="$opened" 'BEGIN { printf "%.2f", n ? (b - a) / n : 0 }')
  if ((after * 10 <= idle * 12)); then back="${waited}s"; else back="not within 60s"; fi
  log "  $name $protocol x$count: idle $(mib "$idle") MiB, held $(mib "$held_kb") MiB ($per_conn KiB each), after $(mib "$after") MiB ($back)"
  MEMORY_ROWS+=("| $name | $protocol | $opened | $(mib "$idle") | $(mib "$held_kb") | $per_conn | $(mib "$after") ($back) |")
}

# start_compared UPSTREAM SCENARIOS SECTION: the other builds of ours
# (--compare), each on its own three ports, switched once like ours; sets
# COMPARE_TARGETS (NAME=ADDR) and COMPARE_PIDS, and their TARGET_PID later.
start_compared() {
  local i base
  COMPARE_TARGETS=()
  COMPARE_PIDS=()
  for i in "${!COMPARE_NAMES[@]}"; do
    base=$((14 + 3 * i))
    start_ours "ours-${COMPARE_NAMES[i]}-$3" "${PORTS[base]}" "${PORTS[base + 1]}" "${PORTS[base + 2]}" \
      "$1" "$1" "$2" "${COMPARE_BINS[i]}"
    COMPARE_PIDS+=("$BG_PID")
    switch_to "${PORTS[base + 1]}" green
    COMPARE_TARGETS+=("${COMPARE_NAMES[i]}=127.0.0.1:${PORTS[base]}")
  done
}

# --- Section: in front of nginx --------------------------------------------
if want nginx; then
  log "starting the nginx upstream and the three proxies in front of it"
  start_upstream_nginx "$UPSTREAM_PORT"
  UP=127.0.0.1:$UPSTREAM_PORT
  start_ours ours "$OURS_PORT" "$OURS_ADMIN_PORT" "$STATUS_PORT" "$UP" "$UP" "$HEALTH_SCENARIO"
  OURS_PID=$BG_PID
  switch_to "$OURS_ADMIN_PORT" green
  start_compared "$UP" "$HEALTH_SCENARIO" nginx
  start_nginx_proxy "$NGINX_PORT" "$UP"
  start_haproxy "$HAPROXY_PORT" "$UP"

  TARGET_PID=([upstream]=$UPSTREAM_PID [ours]=$OURS_PID [nginx]=$NGINX_PID [haproxy]=$HAPROXY_PID)
  for i in "${!COMPARE_NAMES[@]}"; do
    TARGET_PID[${COMPARE_NAMES[i]}]=${COMPARE_PIDS[i]}
  done
  for path in $PATHS; do
    measure "nginx$path" "In front of nginx: GET $path" "$path" \
      "upstream=$UP" "ours=127.0.0.1:$OURS_PORT" "${COMPARE_TARGETS[@]}" \
      "nginx=127.0.0.1:$NGINX_PORT" "haproxy=127.0.0.1:$HAPROXY_PORT"
  done
  for pid in "$HAPROXY_PID" "$NGINX_PID" "${COMPARE_PIDS[@]}" "$OURS_PID" "$UPSTREAM_PID"; do
    forget_pid "$pid"
  done
fi

# --- Section: memory with many idle clients ---------------------------------
# Each figure from a proxy started for it: what one run leaves behind is not
# the next one's idle figure.
if want memory; then
  log "memory: holding $HOLD idle client connections, HTTP/1.1 and HTTP/2, to each proxy"
  start_upstream_nginx "$UPSTREAM_PORT"
  UP=127.0.0.1:$UPSTREAM_PORT
  for count in ${HOLD//,/ }; do
    if ((count + FILE_MARGIN > FILE_LIMIT)); then
      log "  skipping $count connections: the file limit is $FILE_LIMIT (hard limit $(ulimit -Hn))"
      MEMORY_ROWS+=("| all | both | $count | skipped: the file limit here is $FILE_LIMIT (ulimit -Hn) | | | |")
      continue
    fi
    MEM_CONNS=$((count + 1024))
    for protocol in http1 h2; do
      start_ours mem-ours "$OURS_PORT" "$OURS_ADMIN_PORT" "$STATUS_PORT" "$UP" "$UP" "$HEALTH_SCENARIO"
      OURS_PID=$BG_PID
      switch_to "$OURS_ADMIN_PORT" green
      sleep 1
      hold_and_measure ours "$OURS_PID" "127.0.0.1:$OURS_PORT" "$protocol" "$count"
      forget_pid "$OURS_PID"
      for i in "${!COMPARE_NAMES[@]}"; do
        start_ours "mem-${COMPARE_NAMES[i]}" "${PORTS[14 + 3 * i]}" "${PORTS[15 + 3 * i]}" \
          "${PORTS[16 + 3 * i]}" "$UP" "$UP" "$HEALTH_SCENARIO" "${COMPARE_BINS[i]}"
        pid=$BG_PID
        switch_to "${PORTS[15 + 3 * i]}" green
        sleep 1
        hold_and_measure "${COMPARE_NAMES[i]}" "$pid" "127.0.0.1:${PORTS[14 + 3 * i]}" "$protocol" "$count"
        forget_pid "$pid"
      done
      port=$NGINX_PORT
      [[ $protocol == h2 ]] && port=$NGINX_H2_PORT
      start_nginx_proxy "$NGINX_PORT" "$UP"
      sleep 1
      hold_and_measure nginx "$NGINX_PID" "127.0.0.1:$port" "$protocol" "$count"
      forget_pid "$NGINX_PID"
      port=$HAPROXY_PORT
      [[ $protocol == h2 ]] && port=$HAPROXY_H2_PORT
      start_haproxy "$HAPROXY_PORT" "$UP"
      sleep 1
      hold_and_measure haproxy "$HAPROXY_PID" "127.0.0.1:$port" "$protocol" "$count"
      forget_pid "$HAPROXY_PID"
    done
  done
  MEM_CONNS=''
  forget_pid "$UPSTREAM_PID"
fi

# --- Section: in front of the shortener -------------------------------------
if want shortener || want switch; then
  start_bench_shortener "$V1_PORT" v1
  V1_PID=$BG_PID
  V1=127.0.0.1:$V1_PORT
  # One link to follow: the redirect is the shortener's hot path.
  created=$(curl -sS --max-time 5 -H 'Content-Type: application/json' \
    --data '{"url":"https://example.invalid/bench"}' "http://$V1/api/links") ||
    die "could not create a link on the shortener: $created"
  CODE=$(printf '%s' "$created" | json_get code) || die "unexpected answer creating a link: $created"
  [[ -n $CODE ]] || die "no code in the answer creating a link: $created"
fi

if want shortener; then
  log "starting the three proxies in front of the shortener"
  start_ours ours-shortener "$OURS_PORT" "$OURS_ADMIN_PORT" "$STATUS_PORT" "$V1" "$V1" "$SHORTENER_SCENARIOS"
  OURS_PID=$BG_PID
  switch_to "$OURS_ADMIN_PORT" green
  start_compared "$V1" "$SHORTENER_SCENARIOS" shortener
  start_nginx_proxy "$NGINX_PORT" "$V1"
  start_haproxy "$HAPROXY_PORT" "$V1"
  TARGET_PID=([upstream]=$V1_PID [ours]=$OURS_PID [nginx]=$NGINX_PID [haproxy]=$HAPROXY_PID)
  for i in "${!COMPARE_NAMES[@]}"; do
    TARGET_PID[${COMPARE_NAMES[i]}]=${COMPARE_PIDS[i]}
  done
  measure shortener "In front of the shortener: GET /$CODE (302)" "/$CODE" \
    "upstream=$V1" "ours=127.0.0.1:$OURS_PORT" "${COMPARE_TARGETS[@]}" \
    "nginx=127.0.0.1:$NGINX_PORT" "haproxy=127.0.0.1:$HAPROXY_PORT"
  for pid in "$HAPROXY_PID" "$NGINX_PID" "${COMPARE_PIDS[@]}" "$OURS_PID"; do forget_pid "$pid"; done
fi

# --- Section: switching under load ------------------------------------------
SWITCH_REPORT=''
if want switch; then
  log "switch under load: v1 on blue, v2 on green, switching every 0.5 s for ${SWITCH_SECONDS}s"
  start_bench_shortener "$V2_PORT" v2
  V2=127.0.0.1:$V2_PORT
  start_ours ours-switch "$SWITCH_PORT" "$SWITCH_ADMIN_PORT" "$SWITCH_STATUS_PORT" "$V1" "$V2" "$SHORTENER_SCENARIOS"
  ADMIN_URL=http://127.0.0.1:$SWITCH_ADMIN_PORT
  printf 'Authorization: Bearer %s\n' "$TOKEN" >"$WORK/admin.header"
  # The switcher: alternates /switch to green and blue, one outcome a line.
  (
    deadline=$((SECONDS + SWITCH_SECONDS))
    to=green
    while ((SECONDS < deadline)); do
      printf 'BEGIN %s\n' "$(date +%s.%N)" >>"$WORK/switch-times.txt"
      code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X POST \
        -H @"$WORK/admin.header" -H 'Content-Type: application/json' \
        --data "{\"to\":\"$to\"}" "$ADMIN_URL/switch") || code=000
      printf 'END %s\n' "$(date +%s.%N)" >>"$WORK/switch-times.txt"
      printf '%s %s\n' "$to" "$code"
      if [[ $code == 200 ]]; then to=$(other_slot "$to"); fi
      sleep 0.5
    done
  ) >"$WORK/switches.txt" 2>&1 &
  SWITCHER_PID=$!
  PIDS+=("$SWITCHER_PID")
  # A few timed clients beside wrk: the latency around each switch against
  # between switches (wrk's script cannot time a single request).
  python3 "$BENCH_DIR/switch_latency.py" 127.0.0.1 "$SWITCH_PORT" "/$CODE" \
    "$SWITCH_SECONDS" 4 "$WORK/switch-times.txt" >"$WORK/switch-latency.txt" 2>&1 &
  LATENCY_PID=$!
  PIDS+=("$LATENCY_PID")
  timeout $((SWITCH_SECONDS + 30)) "${PIN_LOAD[@]}" wrk -t1 -c "$CONNECTIONS" \
    -d "${SWITCH_SECONDS}s" -s "$BENCH_DIR/tally.lua" "http://127.0.0.1:$SWITCH_PORT/$CODE" \
    >"$WORK/tally.txt" 2>&1 || die "wrk failed in the switch run: $(cat "$WORK/tally.txt")"
  wait "$SWITCHER_PID" || true
  forget_pid "$SWITCHER_PID"
  wait "$LATENCY_PID" || die "the timed clients failed: $(cat "$WORK/switch-latency.txt")"
  forget_pid "$LATENCY_PID"
  SWITCH_REPORT=$(
    python3 - "$WORK/tally.txt" "$WORK/switches.txt" "$SWITCH_SECONDS" <<'PY'
import sys
rel, st, err = {}, {}, {}
with open(sys.argv[1]) as fh:
    tally = fh.read()
for line in tally.splitlines():
    kind, *kvs = line.split() or [""]
    if kind not in ("TALLY", "STATUS", "ERRORS"):
        continue
    f = dict(kv.split("=", 1) for kv in kvs)
    if kind == "TALLY":
        rel[f["release"]] = int(f["count"])
    elif kind == "STATUS":
        st[f["code"]] = int(f["count"])
    elif kind == "ERRORS":
        err = {k: int(v) for k, v in f.items()}
switches = {}
with open(sys.argv[2]) as fh:
    for line in fh:
        parts = line.split()
        if len(parts) == 2:
            switches[parts[1]] = switches.get(parts[1], 0) + 1
print("| answered by (x-release) | responses |")
print("|---|---:|")
for r, n in sorted(rel.items()):
    print(f"| {r} | {n:,} |")
print()
print("| status | responses |")
print("|---|---:|")
for c, n in sorted(st.items()):
    print(f"| {c} | {n:,} |")
print()
print("| error kind (wrk) | count |")
print("|---|---:|")
for k in ("connect", "read", "write", "timeout", "status"):
    label = "status >= 400" if k == "status" else k
    print(f"| {label} | {err.get(k, 0):,} |")
five = sum(n for c, n in st.items() if c.isdigit() and int(c) >= 500)
print(f"| status >= 500 | {five:,} |")
print()
names = {"200": "moved", "409": "refused by the probes", "000": "no answer"}
print("| /switch outcome | count |")
print("|---|---:|")
for c, n in sorted(switches.items()):
    print(f"| {c} {names.get(c, '')} | {n} |")
print(f"\n{err.get('requests', 0):,} requests in {sys.argv[3]} s.")
PY
  )
  SWITCH_REPORT+=$'\n\n'$(cat "$WORK/switch-latency.txt")
fi

# --- Section: terminating TLS -----------------------------------------------
if want tls; then
  log "tls: one ECDSA P-256 certificate; the nginx upstream and the three proxies terminating TLS in front of it"
  mkdir -p "$TLS_DIR"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj /CN=bench.test -addext 'subjectAltName=DNS:bench.test,IP:127.0.0.1' \
    -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/cert.pem" 2>"$TLS_DIR/openssl.log" ||
    die "openssl could not make the certificate: $(cat "$TLS_DIR/openssl.log")"
  cat "$TLS_DIR/cert.pem" "$TLS_DIR/key.pem" >"$TLS_DIR/combined.pem"
  start_upstream_nginx "$UPSTREAM_PORT"
  UP=127.0.0.1:$UPSTREAM_PORT
  OURS_LISTEN_EXTRA="public_tls = \"127.0.0.1:$OURS_TLS_PORT\""
  OURS_TABLES_EXTRA="[[tls.certificate]]
cert = \"$TLS_DIR/cert.pem\"
key = \"$TLS_DIR/key.pem\"
"
  start_ours ours-tls "$OURS_PORT" "$OURS_ADMIN_PORT" "$STATUS_PORT" "$UP" "$UP" "$HEALTH_SCENARIO"
  OURS_PID=$BG_PID
  OURS_LISTEN_EXTRA='' OURS_TABLES_EXTRA=''
  wait_listening "$OURS_PID" "$WORK/ours-tls/proxy.log" "public_tls listening on" "" 30 "our proxy (tls)"
  switch_to "$OURS_ADMIN_PORT" green
  start_nginx_proxy "$NGINX_PORT" "$UP" tls
  start_haproxy "$HAPROXY_PORT" "$UP" tls
  TARGET_PID=([upstream]=$UPSTREAM_PID [ours]=$OURS_PID [nginx]=$NGINX_PID [haproxy]=$HAPROXY_PID)
  SCHEME=https
  TLS_TARGETS=("ours=127.0.0.1:$OURS_TLS_PORT" "nginx=127.0.0.1:$NGINX_PORT" "haproxy=127.0.0.1:$HAPROXY_PORT")
  for target in "${TLS_TARGETS[@]}"; do
    curl -sS -o /dev/null --max-time 5 --cacert "$TLS_DIR/cert.pem" "https://${target#*=}/" ||
      die "${target%%=*} does not answer over TLS (logs in $WORK; rerun with --keep)"
  done
  measure tls-keepalive "Terminating TLS, keep-alive: GET / (HTTP/1.1 over TLS 1.3, as wrk negotiates it)" / "${TLS_TARGETS[@]}"
  WRK_EXTRA=(-H 'Connection: close')
  measure tls-handshake "Terminating TLS, a new connection (a handshake, resumed as wrk does) per request: GET /" / "${TLS_TARGETS[@]}"
  WRK_EXTRA=()
  SCHEME=http
  for pid in "$HAPROXY_PID" "$NGINX_PID" "$OURS_PID" "$UPSTREAM_PID"; do
    forget_pid "$pid"
  done
fi

# --- Section: upgrades under load -------------------------------------------
# wait_gone PID WHAT: true once PID has exited (bounded).
wait_gone() {
  local deadline=$((SECONDS + 30))
  while ! pid_gone "$1" && ((SECONDS < deadline)); do sleep 0.05; done
  pid_gone "$1" || {
    log "$2 (pid $1) did not exit"
    return 1
  }
}

# upgrade_ours N: a takeover, a second proxy on the same config and data
# directory; UP_PID is the serving process, before and after.
upgrade_ours() {
  local old=$UP_PID dir=$WORK/ours-upgrade
  PROXY_ADMIN_TOKEN=$TOKEN TOKIO_WORKER_THREADS=1 RUST_LOG=${BENCH_RUST_LOG:-warn} \
    start_server "$dir/proxy-$1.log" "$PROXY_BIN" --config "$dir/proxy.toml"
  local new=$BG_PID
  wait_gone "$old" "our old proxy" || return 1
  pid_gone "$new" && return 1
  forget_pid "$old"
  UP_PID=$new
}

# upgrade_nginx N: nginx's binary upgrade (its documentation, "Upgrading
# Executable on the Fly"): USR2 makes the master start a new master of the
# binary, which renames the pid file nginx.pid.oldbin and writes its own;
# QUIT then stops the old master gracefully. UP_PID is the master.
upgrade_nginx() {
  local old=$UP_PID dir=$WORK/nginx-upgrade new='' deadline
  kill -USR2 "$old" 2>/dev/null || return 1
  deadline=$((SECONDS + 15))
  while ((SECONDS < deadline)); do
    if [[ -s $dir/nginx.pid.oldbin && -s $dir/nginx.pid ]]; then
      new=$(<"$dir/nginx.pid")
      [[ $new != "$old" ]] && break
    fi
    sleep 0.05
  done
  [[ -n $new && $new != "$old" ]] || return 1
  PIDS+=("$new")
  kill -QUIT "$old" 2>/dev/null || return 1
  wait_gone "$old" "the old nginx master" || return 1
  forget_pid "$old"
  UP_PID=$new
}

# upgrade_haproxy N: a master-worker reload (USR2 to the master): the new
# worker takes the listening sockets over from the old one (expose-fd
# listeners), which finishes its connections and exits. UP_PID is the master.
upgrade_haproxy() {
  local master=$UP_PID before after deadline
  before=$(pgrep -P "$master" | tr '\n' ' ')
  kill -USR2 "$master" 2>/dev/null || return 1
  deadline=$((SECONDS + 30))
  while ((SECONDS < deadline)); do
    after=$(pgrep -P "$master" | tr -d '\n')
    # One worker left, and not one from before.
    if [[ $after =~ ^[0-9]+$ && " $before " != *" $after "* ]]; then
      return 0
    fi
    sleep 0.05
  done
  return 1
}

UPGRADE_ROWS=()
# upgrade_run NAME PORT HOW: wrk through 127.0.0.1:PORT for UPGRADE_SECONDS
# while upgrade_NAME runs UPGRADES times, spread over the run; a table row.
upgrade_run() {
  local name=$1 port=$2 how=$3
  local out=$WORK/upgrade-$name.txt
  timeout $((UPGRADE_SECONDS + 30)) "${PIN_LOAD[@]}" wrk -t1 -c "$CONNECTIONS" \
    -d "${UPGRADE_SECONDS}s" -s "$BENCH_DIR/tally.lua" "http://127.0.0.1:$port/" >"$out" 2>&1 &
  local wrk_pid=$! completed=0 i gap
  PIDS+=("$wrk_pid")
  # None in the run's first or last second.
  gap=$(awk -v s="$UPGRADE_SECONDS" -v n="$UPGRADES" 'BEGIN { printf "%.2f", (s - 2) / (n + 1) }')
  sleep 1
  for ((i = 1; i <= UPGRADES; i++)); do
    sleep "$gap"
    if "upgrade_$name" "$i"; then
      completed=$((completed + 1))
    else
      log "$name: upgrade $i did not complete"
    fi
  done
  wait "$wrk_pid" || die "wrk failed in the upgrade run of $name: $(cat "$out")"
  forget_pid "$wrk_pid"
  local row
  row=$(
    python3 - "$out" "$name" "$how" "$completed" "$UPGRADES" <<'PY'
import sys
out, name, how, done, wanted = sys.argv[1:6]
st, err = {}, {}
for line in open(out):
    kind, *kvs = line.split() or [""]
    f = dict(kv.split("=", 1) for kv in kvs if "=" in kv)
    if kind == "STATUS":
        st[f["code"]] = int(f["count"])
    elif kind == "ERRORS":
        err = {k: int(v) for k, v in f.items()}
if not err:
    sys.exit(f"no ERRORS line in {out}")
bad = sum(n for c, n in st.items() if c.isdigit() and int(c) >= 400)
kinds = ["connect", "read", "write", "timeout"]
failed = sum(err.get(k, 0) for k in kinds) + bad
cells = [name, how, f"{done}/{wanted}", f"{err.get('requests', 0):,}"]
cells += [f"{err.get(k, 0):,}" for k in kinds] + [f"{bad:,}", f"{failed:,}"]
print("| " + " | ".join(cells) + " |")
PY
  ) || die "cannot read the upgrade run of $name: $(cat "$out")"
  UPGRADE_ROWS+=("$row")
  log "  $row"
}

if want upgrade; then
  log "upgrades under load: each proxy upgraded $UPGRADES times in ${UPGRADE_SECONDS}s of wrk"
  start_upstream_nginx "${UPGRADE_PORTS[0]}"
  UPGRADE_UPSTREAM_PID=$BG_PID
  UP=127.0.0.1:${UPGRADE_PORTS[0]}

  start_ours ours-upgrade "${UPGRADE_PORTS[1]}" "${UPGRADE_PORTS[2]}" "${UPGRADE_PORTS[3]}" \
    "$UP" "$UP" "$HEALTH_SCENARIO"
  UP_PID=$BG_PID
  upgrade_run ours "${UPGRADE_PORTS[1]}" "takeover (a second proxy on its data directory)"
  forget_pid "$UP_PID"

  # nginx upgrades its binary only as a daemon: a master in the foreground
  # ignores USR2 while its parent (this script) runs.
  dir=$WORK/nginx-upgrade
  mkdir -p "$dir"
  {
    nginx_common "$dir" | sed 's/^daemon off;/daemon on;/'
    cat <<EOF
http {
$(nginx_temp_paths "$dir")
  upstream backend {
    server $UP;
    keepalive $((CONNECTIONS > 64 ? CONNECTIONS : 64));
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:${UPGRADE_PORTS[4]} backlog=4096;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
  } >"$dir/nginx.conf"
  # By its absolute path: the binary upgrade executes argv[0] again.
  "${PIN_SERVER[@]}" "$(command -v nginx)" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" \
    </dev/null >"$dir/stderr.log" 2>&1 ||
    die "nginx did not start: $(cat "$dir/stderr.log" "$dir/error.log" 2>/dev/null)"
  UP_PID=$(<"$dir/nginx.pid")
  PIDS+=("$UP_PID")
  wait_port "127.0.0.1:${UPGRADE_PORTS[4]}" "$UP_PID" "nginx (upgrade)"
  upgrade_run nginx "${UPGRADE_PORTS[4]}" "binary upgrade (USR2, then QUIT to the old master)"
  forget_pid "$UP_PID"

  dir=$WORK/haproxy-upgrade
  mkdir -p "$dir"
  cat >"$dir/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 5000
  # A reload's new worker takes the listeners over through this socket.
  stats socket $dir/stats.sock mode 600 level admin expose-fd listeners

defaults
  mode http
  timeout connect 1s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always

frontend public
  bind 127.0.0.1:${UPGRADE_PORTS[4]}
  default_backend upstream

backend upstream
  server upstream $UP
EOF
  start_server "$dir/haproxy.log" haproxy -W -db -f "$dir/haproxy.cfg"
  UP_PID=$BG_PID
  wait_port "127.0.0.1:${UPGRADE_PORTS[4]}" "$UP_PID" "HAProxy (upgrade)"
  upgrade_run haproxy "${UPGRADE_PORTS[4]}" "master-worker reload (USR2), listeners handed over"
  forget_pid "$UP_PID"
  forget_pid "$UPGRADE_UPSTREAM_PID"
fi

# --- Report -------------------------------------------------------------------
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
cat <<EOF
# Proxy benchmark

$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs (${cpu:-unknown CPU}), Linux $(uname -r).
wrk $(wrk -v 2>&1 | head -n 1 | awk '{print $2}'), $(nginx -v 2>&1 | sed 's/.*: //'), HAProxy $(haproxy -v | head -n 1 | awk '{print $3}').
$ROUNDS rounds of ${DURATION}s per target, alternating; $CONNECTIONS connections, 1 wrk thread; $(
  if ((PIN)); then echo "wrk on CPU 0, proxy and upstream on CPU 1"; else echo "not pinned"; fi
); each proxy on one worker thread.
nginx and HAProxy: $(
  if [[ $BASELINE_HEADERS == same ]]; then
    echo "X-Forwarded-For, -Proto, -Host and X-Request-Id set as ours sets them"
  else
    echo "their default header handling (no X-Forwarded-*, no request id)"
  fi
); keep-alive to the upstream everywhere.
Load average (1, 5, 15 min) at the start: $LOAD_START; at the end: $LOAD_END.

EOF
if [[ -s $RESULTS ]]; then
  echo "## Throughput and latency"
  echo
  python3 "$BENCH_DIR/summarize.py" "$RESULTS" "$TITLES"
fi
if ((${#MEMORY_ROWS[@]})); then
  cat <<EOF
## Memory with idle clients (RSS, MiB; nginx counts master and worker)

Each proxy started afresh for each row; idle: once one request has been
served; the connections held ${HOLD_SETTLE}s after the last one opened. KiB per
connection: (held - idle) / connections. After they close: the first reading
within 20% of idle (every second), or the reading at 60s.

| proxy | protocol | connections | idle | held | KiB per connection | after they close |
|---|---|---:|---:|---:|---:|---:|
EOF
  printf '%s\n' "${MEMORY_ROWS[@]}"
  echo
fi
if [[ -n $SWITCH_REPORT ]]; then
  cat <<EOF
## Switching under load

wrk through our proxy to GET /$CODE (v1 on blue, v2 on green, one database),
while POST /switch alternates every 0.5 s.

$SWITCH_REPORT
EOF
fi
if ((${#UPGRADE_ROWS[@]})); then
  cat <<EOF
## Upgrades under load

wrk ($CONNECTIONS keep-alive connections) through each proxy to GET / of the
nginx upstream for ${UPGRADE_SECONDS} s, while the proxy is upgraded $UPGRADES
times as its documentation recommends. A failed request is a wrk error of any
kind or a status of 400 and above.

| proxy | upgrade | done | requests | connect | read | write | timeout | status >= 400 | failed |
|---|---|---:|---:|---:|---:|---:|---:|---:|---:|
EOF
  printf '%s\n' "${UPGRADE_ROWS[@]}"
  echo
fi
