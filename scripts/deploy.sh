#!/usr/bin/env bash
# Deploys a new shortener release behind the proxy, unattended: start it on the
# idle slot, ask the proxy to switch (the proxy probes it first), and keep the
# old release running, warm, for a rollback.
set -euo pipefail

PROG=deploy
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<EOF
Usage: scripts/deploy.sh --release LABEL [options]

Starts shortener release LABEL on the proxy's idle slot, on every member when
the slot is a pool (the addresses come from the proxy's GET /status), waits
until each listens, then POSTs /switch to it.
The proxy probes the new release first and moves traffic only if every probe
scenario passes. The old release keeps running for POST /rollback.

Exit status: 0 when traffic moved; 1 when the proxy refused the switch (the new
instance is stopped, and the failing scenario, step, expected and got are
printed), or on any other error (unreachable proxy, bad token, ...).

Options:
$RELEASE_OPTIONS_HELP
  -h, --help          this help

Example:
  scripts/deploy.sh --release v2
  scripts/deploy.sh --release v3 --fault create-500    # watch the gate refuse it
EOF
}

while (($#)); do
  case $1 in
  -h | --help)
    usage
    exit 0
    ;;
  *)
    parse_release_option "$@"
    ((SHIFT_BY > 0)) || die "unknown argument '$1' (see --help)"
    shift "$SHIFT_BY"
    ;;
  esac
done
check_release_options
admin_init "$ADMIN" "$TOKEN_FILE"

trap release_exit_trap EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_on_idle_slot

log "asking the proxy to switch to $NEW_SLOT (it probes $RELEASE first)"
TRAFFIC_REQUEST_SENT=1
admin_request POST /switch "{\"to\":\"$NEW_SLOT\"$(guard_field)}"
case $ADMIN_STATUS in
200)
  NEW_KEEP=1
  ;;
409)
  printf '%s: the proxy refused the switch to %s (%s); traffic stays on %s (%s)\n' \
    "$PROG" "$NEW_SLOT" "$RELEASE" "$ACTIVE" "$ACTIVE_RELEASE" >&2
  print_refusal >&2
  stop_new_instance
  exit 1
  ;;
*)
  # No answer or an unexpected one: the switch may still have happened.
  explanation=$(admin_explain)
  ADMIN_MAX_TIME=10
  admin_request GET /status
  if [[ $ADMIN_STATUS == 200 && $(status_active "$ADMIN_BODY") == "$NEW_SLOT" ]]; then
    warn "the switch call failed ($explanation), but /status shows $NEW_SLOT active"
    NEW_KEEP=1
  else
    die "the switch to $NEW_SLOT failed: $explanation"
  fi
  ;;
esac

# Report what the proxy says is live now.
body=$ADMIN_BODY
active=$(status_active "$body" 2>/dev/null || true)
if [[ $active != blue && $active != green ]]; then
  read_status
  body=$STATUS_BODY
  active=$(status_active "$body")
fi
json_fields "$body" "slots.$active.release"
log "traffic moved: $active is active, release ${FIELDS[0]:-$RELEASE}"
log "$ACTIVE keeps running release $ACTIVE_RELEASE for a rollback (POST $ADMIN_URL/rollback)"
