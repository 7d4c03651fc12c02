#!/usr/bin/env bash
# knock-xdp demo, run by `cargo xtask demo` (as root):
#
#   xtask/demo.sh /path/to/knock-xdp
#
# Builds a two-namespace network (server and client joined by a veth pair),
# runs a real HTTP service in the server namespace and shows the door
# closing, opening for a few seconds after a client sends its rotating knock
# sequence (but not for a wrong-order knock, nor for the same sequence
# replayed from another address), and closing again.
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
# A second client address, standing in for an eavesdropper who replays the
# sequence it saw.
SPY4=10.213.0.3
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
    # Whatever a daemon that had to be killed left pinned in the host's bpffs.
    [[ -z $STATE || ! -d $STATE ]] || "$BIN" --state-dir "$STATE" detach >/dev/null 2>&1
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

# Opens a TCP connection to the service from the client namespace with the
# source address $1 (python: knock-xdp check has no source option) and
# checks the verdict like expect_check.
expect_probe_from() {
    local src=$1 want=$2 out rc=0
    out=$(ip netns exec "$CLI" python3 - "$src" "$SRV4" "$PORT" 2>&1 <<'EOF'
import socket, sys
src, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket()
s.bind((src, 0))
s.settimeout(2)
try:
    s.connect((host, port))
    print("open")
except socket.timeout:
    print("filtered")
except ConnectionRefusedError:
    print("closed")
finally:
    s.close()
EOF
    ) || rc=$?
    echo "    connect to $SRV4:$PORT from $src: ${out:-<no output>}"
    if [[ $rc -ne 0 || $out != "$want" ]]; then
        fail "expected a connection from $src to be '$want', got '${out}' (exit $rc)"
    fi
}

# Shows what the daemon logged about knocks matching $1 (informational: the
# verdicts above are what the demo checks).
daemon_said() {
    local line
    while IFS= read -r line; do
        echo "    daemon log: $line"
    done < <(sed -n 's/.*daemon::events: //p' "$WORK/daemon.log" 2>/dev/null | grep -F -- "$1")
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/knock-xdp-demo.XXXXXX")
STATE=$WORK/state
# Where the knock client remembers the slots it used: here, not in ~/.local/state.
export KNOCK_XDP_SLOTS_DIR=$WORK/slots
mkdir -m 0700 "$STATE" "$WORK/www"
echo "hello from behind the knock-xdp door" >"$WORK/www/index.html"

step "create namespaces $SRV (server, $SRV4) and $CLI (client, $CLI4 and $SPY4)"
ip netns add "$SRV"
ip netns add "$CLI"
ip link add "$VS" netns "$SRV" type veth peer name "$VC" netns "$CLI"
ip -n "$SRV" addr add "$SRV4/24" dev "$VS"
ip -n "$CLI" addr add "$CLI4/24" dev "$VC"
# Secondary: the client's own traffic keeps leaving from $CLI4.
ip -n "$CLI" addr add "$SPY4/24" dev "$VC"
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

step "start the daemon: attach to $VS (native XDP), knocks open the door for 5 s"
echo "    \$ knock-xdp attach $VS --mode native --open-window 5s   (in the background)"
# nsenter, not ip netns exec: the daemon keeps the host's bpffs, so its pins
# (and protection) would outlive a crash; knock-xdp refuses to start fail
# closed under ip netns exec, whose private bpffs dies with the process.
nsenter --net="/run/netns/$SRV" -- "$BIN" --state-dir "$STATE" attach "$VS" --mode native \
    --open-window 5s >"$WORK/daemon.log" 2>&1 &
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

PROFILE=$WORK/laptop.knock
step "add a client 'laptop' with a fresh secret"
knock client add laptop --profile-out "$PROFILE"
[[ -s $PROFILE ]] || fail "client add did not write $PROFILE"
grep -q '^secret = ' "$PROFILE" || fail "$PROFILE has no secret line"
echo "    the profile, $PROFILE (secret masked):"
sed 's/^secret = .*/secret = "…" (256 bits, hidden)/; s/^/      /' "$PROFILE"
echo "    \$ knock-xdp sequence --profile $PROFILE"
seq_now=$("$BIN" sequence --profile "$PROFILE") || fail "knock-xdp sequence failed"
read -r -a seq_ports <<<"$seq_now"
[[ ${#seq_ports[@]} -eq 4 ]] || fail "expected a sequence of 4 knocks, got '$seq_now'"
echo "    this slot's sequence: $seq_now (it changes every 30 s)"

step "knock in the wrong order (the sequence reversed) from $CLI4"
for ((i = ${#seq_ports[@]} - 1; i >= 0; i--)); do
    p=${seq_ports[i]%:tcp}
    out=$(ip netns exec "$CLI" "$BIN" check "$SRV4" "$p" --timeout 200ms 2>&1) || true
    echo "    knock $p: ${out:-<no output>}"
done
expect_check filtered
daemon_said "knock reset"
echo "knocking in the wrong order does nothing"

step "knock the right sequence from the client ($CLI4)"
echo "    \$ knock-xdp knock $SRV4 --profile $PROFILE --check $PORT   (from the client)"
rc=0
out=$(ip netns exec "$CLI" "$BIN" knock "$SRV4" --profile "$PROFILE" --check "$PORT" 2>&1) || rc=$?
sed 's/^/    /' <<<"$out"
if [[ $rc -ne 0 || $out != *"$SRV4:$PORT open"* ]]; then
    fail "expected '$SRV4:$PORT open' (exit 0) after the knock, got exit $rc"
fi
# The sequence actually sent: "knocked ADDR: p1 p2 p3 p4 (slot N)". The
# replay below must use exactly these ports, whatever slot it is by then.
knocked=$(grep -m1 '^knocked ' <<<"$out") || fail "the knock printed no 'knocked' line"
knocked=${knocked#*: }
knocked=${knocked% (*}
read -r -a knocked_ports <<<"$knocked"
for p in "${knocked_ports[@]}"; do
    [[ ${p%:tcp} =~ ^[0-9]+$ ]] || fail "cannot parse the knocked sequence '$knocked'"
done
[[ ${#knocked_ports[@]} -eq 4 ]] || fail "expected 4 knocked ports, got '$knocked'"
echo "    fetching http://$SRV4:$PORT/ from the client"
status=$(ip netns exec "$CLI" python3 -c \
    'import urllib.request;print(urllib.request.urlopen("http://10.213.0.1:8080/", timeout=3).status)' 2>&1) ||
    fail "fetching the page failed: $status"
echo "    HTTP status: $status"
[[ $status == 200 ]] || fail "expected HTTP status 200, got $status"
listing=$(knock list) || fail "knock-xdp list failed"
printf '%s\n' "$listing"
[[ $listing == *"$CLI4"*"knock (laptop)"* ]] ||
    fail "expected 'list' to show $CLI4 admitted by 'knock (laptop)'"
daemon_said "door opened"
echo "door open after the knock: the client gets through"

step "replay the same sequence ($knocked) from $SPY4"
ports=()
for p in "${knocked_ports[@]}"; do ports+=("${p%:tcp}"); done
ip netns exec "$CLI" python3 - "$SPY4" "$SRV4" "${ports[@]}" <<'EOF' ||
import socket, sys, time
src, host, ports = sys.argv[1], sys.argv[2], sys.argv[3:]
for port in ports:
    s = socket.socket()
    s.bind((src, 0))
    s.setblocking(False)
    s.connect_ex((host, int(port)))
    time.sleep(0.05)
    s.close()
    print(f"    SYN {src} -> {host}:{port}")
EOF
    fail "sending the replayed sequence failed"
expect_probe_from "$SPY4" filtered
daemon_said "replayed"
echo "a replayed sequence does not open the door"

step "wait 6 s for the open window to close"
sleep 6
expect_check filtered
echo "window closed: new connections are refused again"
knock status

step "detach"
knock detach
expect_check open
echo "    port $PORT is no longer protected"

printf '\ndemo: door closed, opened by a knock, closed again — OK\n'
