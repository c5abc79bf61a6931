#!/usr/bin/env bash
# Rolls a new shortener release out as a canary: start it on the idle slot, then
# raise its share of traffic step by step, watching the proxy's guard between
# steps, and promote it at 100%. Any refusal or abort leaves traffic on the old
# release.
set -euo pipefail

PROG=canary
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

STEPS=5,25,50,100
PAUSE=30

usage() {
  cat <<EOF
Usage: scripts/canary.sh --release LABEL [--steps 5,25,50,100] [--pause 30] [options]

Starts shortener release LABEL on the proxy's idle slot (every member of a pool, like deploy.sh), then
for each percentage in --steps POSTs /canary {"slot":..,"percent":P} (the
proxy probes the release before it gets any traffic), and at 100 POSTs
/promote. Between steps it waits --pause seconds, reading GET /status every
second; it stops as soon as the proxy aborted the canary (the canary is gone or
guard.aborted is true) or refused a step (409).

Exit status: 0 when the release was promoted; 1 when the proxy refused or
aborted the canary, or on any other error. Then traffic is on the old release
(the script POSTs /abort when it stops early) and the new instance is stopped.

Options:
  --steps LIST        increasing percentages ending with 100 (default 5,25,50,100)
  --pause SECONDS     wait between two steps (default 30)
$RELEASE_OPTIONS_HELP
  -h, --help          this help
EOF
}

while (($#)); do
  case $1 in
  -h | --help)
    usage
    exit 0
    ;;
  --steps)
    take_value "$@"
    STEPS=$VALUE
    shift 2
    ;;
  --pause)
    take_value "$@"
    PAUSE=$VALUE
    shift 2
    ;;
  *)
    parse_release_option "$@"
    ((SHIFT_BY > 0)) || die "unknown argument '$1' (see --help)"
    shift "$SHIFT_BY"
    ;;
  esac
done

[[ $PAUSE =~ ^[0-9]+$ ]] || die "--pause must be a whole number of seconds"
IFS=, read -r -a STEP_LIST <<<"$STEPS"
previous=0
for step in "${STEP_LIST[@]}"; do
  if ! [[ $step =~ ^[0-9]+$ ]] || ((step <= previous || step > 100)); then
    die "--steps must be increasing percentages from 1 to 100, separated by commas: '$STEPS'"
  fi
  previous=$step
done
((previous == 100)) || die "--steps must end with 100 (the promotion): '$STEPS'"
check_release_options
admin_init "$ADMIN" "$TOKEN_FILE"

# 1 from the first /canary call until promotion: stopping early must /abort.
CANARY_OPEN=0

canary_exit_trap() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ $CANARY_OPEN == 1 && $NEW_KEEP != 1 ]]; then
    log "aborting the canary: POST /abort"
    ADMIN_MAX_TIME=10
    admin_request POST /abort
    [[ $ADMIN_STATUS == 200 ]] || warn "POST /abort: $(admin_explain)"
  fi
  release_cleanup "$rc"
}
trap canary_exit_trap EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# fail_canary WHY: report, leave traffic on the old release, exit 1.
fail_canary() {
  printf '%s: %s; traffic stays on %s (%s)\n' "$PROG" "$1" "$ACTIVE" "$ACTIVE_RELEASE" >&2
  exit 1
}

# check_canary PERCENT: read /status; fail when the proxy aborted the canary.
# PERCENT empty: only check that the canary is still ours.
STATUS_FAILURES=0
check_canary() {
  local want=$1
  admin_request GET /status
  if [[ $ADMIN_STATUS != 200 ]]; then
    STATUS_FAILURES=$((STATUS_FAILURES + 1))
    ((STATUS_FAILURES < 3)) || die "$(admin_explain)"
    warn "GET /status: $(admin_explain)"
    return 0
  fi
  STATUS_FAILURES=0
  local -a FIELDS=()
  json_fields "$ADMIN_BODY" canary.slot canary.percent guard.aborted guard.reason active ||
    die "the proxy's /status is not JSON: ${ADMIN_BODY:0:200}"
  local slot=${FIELDS[0]} percent=${FIELDS[1]} aborted=${FIELDS[2]} reason=${FIELDS[3]}
  if [[ $aborted == true || $slot != "$NEW_SLOT" ]]; then
    CANARY_OPEN=0
    fail_canary "the proxy aborted the canary of $RELEASE at ${CURRENT_PERCENT}%: ${reason:-the canary is gone from /status}"
  fi
  if [[ -n $want && $percent != "$want" ]]; then
    warn "/status shows the canary at ${percent}%, not the ${want}% asked for"
  fi
}

start_on_idle_slot
CURRENT_PERCENT=0
TRAFFIC_REQUEST_SENT=1

for step in "${STEP_LIST[@]}"; do
  if ((step == 100)); then
    log "promoting $RELEASE on $NEW_SLOT: POST /promote"
    admin_request POST /promote "{$(guard_field | cut -c2-)}"
  else
    log "canary step: ${step}% of traffic to $RELEASE on $NEW_SLOT"
    CANARY_OPEN=1
    admin_request POST /canary "{\"slot\":\"$NEW_SLOT\",\"percent\":$step$(guard_field)}"
  fi
  case $ADMIN_STATUS in
  200) ;;
  409)
    # A refused first step leaves no canary behind to abort.
    ((CURRENT_PERCENT > 0)) || CANARY_OPEN=0
    printf '%s: the proxy refused the %s%% step of %s:\n' "$PROG" "$step" "$RELEASE" >&2
    print_refusal >&2
    fail_canary "canary stopped"
    ;;
  *) die "$(admin_explain)" ;;
  esac
  CURRENT_PERCENT=$step
  if ((step == 100)); then
    break
  fi
  check_canary "$step"
  deadline=$((SECONDS + PAUSE))
  while ((SECONDS < deadline)); do
    sleep 1
    check_canary "$step"
  done
done

read_status
json_fields "$STATUS_BODY" active "slots.$NEW_SLOT.release" guard.watching guard.bake_until
if [[ ${FIELDS[0]} != "$NEW_SLOT" ]]; then
  die "POST /promote answered 200, but /status shows ${FIELDS[0]} active, not $NEW_SLOT"
fi
NEW_KEEP=1
CANARY_OPEN=0
log "promoted: $NEW_SLOT is active, release ${FIELDS[1]:-$RELEASE}"
if [[ ${FIELDS[2]} == bake ]]; then
  log "the proxy's guard watches $NEW_SLOT${FIELDS[3]:+ until ${FIELDS[3]}} and may still pull it back (GET $ADMIN_URL/status)"
fi
log "$ACTIVE keeps running release $ACTIVE_RELEASE for a rollback (POST $ADMIN_URL/rollback)"
