#!/usr/bin/env bash
# knock-xdp demo, run by `cargo xtask demo` (as root):
#
#   xtask/demo.sh /path/to/knock-xdp
#
# Builds a two-namespace network (server and client joined by a veth pair),
# runs a real HTTP service in the server namespace and shows the door
# closing, opening for one client for a few seconds, and closing again.
# Everything lives in throwaway namespaces and a temp directory, which the
# exit trap removes; the host's own network is never touched.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 /path/to/knock-xdp" >&2
    exit 2
fi
if [[ $EUID -ne 0 ]]; then
    echo "demo: must be run as root (network namespaces, XDP)" >&2
    exit 2
fi
BIN=$(realpath -- "$1")
if [[ ! -x $BIN ]]; then
    echo "demo: $BIN is not an executable" >&2
    exit 2
fi

# Unique per run, so concurrent demos or tests cannot collide. Interface names
# must fit in 15 characters: "kxd-s" + a PID of at most 7 digits does.
SRV=kxd-srv-$$
CLI=kxd-cli-$$
VS=kxd-s$$
VC=kxd-c$$
SRV4=10.213.0.1
CLI4=10.213.0.2
PORT=8080

WORK=""
STATE=""
HTTP_PID=""
DAEMON_PID=""
CLEANED=""

# Stops a background process: SIGTERM, up to 5 s grace, then SIGKILL.
stop() {
    local pid=$1
    [[ -n $pid ]] || return 0
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}

cleanup() {
    [[ -z $CLEANED ]] || return 0
    CLEANED=1
    set +e
    stop "$DAEMON_PID"
    stop "$HTTP_PID"
    ip netns del "$SRV" 2>/dev/null
    ip netns del "$CLI" 2>/dev/null
    [[ -z $WORK ]] || rm -rf -- "$WORK"
    return 0
}
# `cleanup` on every way out; a signal also ends the script (a bash trap on
# INT/TERM alone would carry on after the handler).
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

step() { printf '\n==> %s\n' "$*"; }
fail() {
    printf 'demo: FAILED: %s\n' "$*" >&2
    exit 1
}
# The daemon's CLI in the server namespace, echoed first.
knock() {
    echo "    \$ knock-xdp $*"
    ip netns exec "$SRV" "$BIN" --state-dir "$STATE" "$@"
}

# Probes the service from the client and checks the verdict: open (exit 0),
# closed (exit 3) or filtered (exit 4).
expect_check() {
    local want=$1 want_rc out rc=0
    case $want in
        open) want_rc=0 ;;
        closed) want_rc=3 ;;
        filtered) want_rc=4 ;;
        *) fail "expect_check: unknown verdict $want" ;;
    esac
    out=$(ip netns exec "$CLI" "$BIN" check "$SRV4" "$PORT" 2>&1) || rc=$?
    echo "    check $SRV4 $PORT from the client: ${out:-<no output>} (exit $rc)"
    if [[ $rc -ne $want_rc || ${out,,} != *"$want"* ]]; then
        fail "expected the check to say '$want' (exit $want_rc), got '${out}' (exit $rc)"
    fi
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/knock-xdp-demo.XXXXXX")
STATE=$WORK/state
mkdir -m 0700 "$STATE" "$WORK/www"
echo "hello from behind the knock-xdp door" >"$WORK/www/index.html"

step "create namespaces $SRV (server, $SRV4) and $CLI (client, $CLI4)"
ip netns add "$SRV"
ip netns add "$CLI"
ip link add "$VS" netns "$SRV" type veth peer name "$VC" netns "$CLI"
ip -n "$SRV" addr add "$SRV4/24" dev "$VS"
ip -n "$CLI" addr add "$CLI4/24" dev "$VC"
ip -n "$SRV" addr add fd00:213::1/64 dev "$VS" nodad
ip -n "$CLI" addr add fd00:213::2/64 dev "$VC" nodad
for ns_dev in "$SRV:$VS" "$CLI:$VC"; do
    ip -n "${ns_dev%%:*}" link set lo up
    ip -n "${ns_dev%%:*}" link set "${ns_dev#*:}" up
done
ip -n "$SRV" -brief addr show dev "$VS"
ip -n "$CLI" -brief addr show dev "$VC"

step "start a real TCP service: python3 -m http.server $PORT on $SRV4"
ip netns exec "$SRV" python3 -m http.server "$PORT" --bind "$SRV4" \
    --directory "$WORK/www" >"$WORK/http.log" 2>&1 &
HTTP_PID=$!
listening=""
for _ in $(seq 100); do
    if [[ -n $(ip netns exec "$SRV" ss -Hltn "sport = :$PORT") ]]; then
        listening=1
        break
    fi
    kill -0 "$HTTP_PID" 2>/dev/null || break
    sleep 0.1
done
if [[ -z $listening ]]; then
    cat "$WORK/http.log" >&2
    fail "the HTTP service did not start listening on $SRV4:$PORT"
fi
echo "    listening on $SRV4:$PORT"

step "the service is reachable from the client"
expect_check open

step "start the daemon: attach to $VS (native XDP)"
echo "    \$ knock-xdp attach $VS --mode native   (in the background)"
ip netns exec "$SRV" "$BIN" --state-dir "$STATE" attach "$VS" --mode native \
    >"$WORK/daemon.log" 2>&1 &
DAEMON_PID=$!
ready=""
for _ in $(seq 50); do
    if ip netns exec "$SRV" "$BIN" --state-dir "$STATE" status >/dev/null 2>&1; then
        ready=1
        break
    fi
    kill -0 "$DAEMON_PID" 2>/dev/null || break
    sleep 0.2
done
if [[ -z $ready ]]; then
    echo "---- daemon log ----" >&2
    cat "$WORK/daemon.log" >&2
    echo "--------------------" >&2
    if kill -0 "$DAEMON_PID" 2>/dev/null; then
        fail "the daemon did not answer 'status' within 10 s"
    fi
    fail "the daemon exited before answering 'status'"
fi
knock status

step "protect $PORT/tcp"
knock protect "$PORT/tcp"
expect_check filtered
echo "door closed: the service is invisible"

step "allow the client ($CLI4) for 5 s"
knock allow "$CLI4" --for 5s
knock list
expect_check open
echo "    fetching http://$SRV4:$PORT/ from the client"
status=$(ip netns exec "$CLI" python3 -c \
    'import urllib.request;print(urllib.request.urlopen("http://10.213.0.1:8080/", timeout=3).status)' 2>&1) ||
    fail "fetching the page failed: $status"
echo "    HTTP status: $status"
[[ $status == 200 ]] || fail "expected HTTP status 200, got $status"
echo "door open: the client gets through"

step "wait 6 s for the allowance to expire"
sleep 6
expect_check filtered
echo "door closed again"
knock status

step "detach"
knock detach
expect_check open
echo "    port $PORT is no longer protected"

printf '\ndemo: door closed, opened, closed again — OK\n'
