# Shared by benchmarks/tftp.sh and benchmarks/tftp-loss.sh (sourced, not run).
#
# Everything runs inside a private network namespace that the calling script creates, so servers
# listen only on that namespace's loopback and the nftables loss rule touches nothing else.
# Servers and clients are pinned (taskset): on a 2-vCPU machine an unpinned lock-step exchange
# swings by several times with background load (see shared/TEST-NOTES.md).

SERVER_CPUS=${SERVER_CPUS:-0}
CLIENT_CPUS=${CLIENT_CPUS:-1}
ADDR=127.0.0.1

# Port of each server inside the namespace. dnsmasq has no option for its TFTP port: it takes 69.
declare -A PORT=([ours]=6901 [tftpd-hpa]=6902 [dnsmasq]=69 [atftpd]=6904)
declare -A SERVER_PID=()

die() { echo "error: $*" >&2; exit 1; }
note() { echo "# $*" >&2; }

find_imagebuild() {
    if [[ -n ${IMAGEBUILD:-} ]]; then [[ -x $IMAGEBUILD ]] || die "IMAGEBUILD=$IMAGEBUILD is not executable"; return; fi
    local repo; repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    for candidate in "$repo/.build-rel/release/imagebuild" "$repo/.build/release/imagebuild"; do
        if [[ -x $candidate ]]; then IMAGEBUILD=$candidate; return; fi
    done
    die "no release build of imagebuild: run 'swift build -c release --product imagebuild' or set IMAGEBUILD"
}

find_atftpd() {
    # atftpd and tftpd-hpa conflict as Debian packages; an unpacked atftpd (dpkg -x) works as well.
    ATFTPD=${ATFTPD:-$(command -v atftpd || true)}
    [[ -z $ATFTPD && -x /opt/atftpd-pkg/usr/sbin/atftpd ]] && ATFTPD=/opt/atftpd-pkg/usr/sbin/atftpd
    true
}

# Which reference servers are installed; missing ones are left out of the tables, with a note.
available_references() {
    local found=()
    command -v in.tftpd >/dev/null && found+=(tftpd-hpa) || note "tftpd-hpa (in.tftpd) not installed: column left out"
    command -v dnsmasq >/dev/null && found+=(dnsmasq) || note "dnsmasq not installed: column left out"
    find_atftpd
    [[ -n $ATFTPD ]] && found+=(atftpd) || note "atftpd not installed: column left out"
    echo "${found[@]}"
}

# start_server NAME ROOT [extra]: starts one server on the namespace's loopback, pinned, and waits until
# it answers a read request (bounded). Sets SERVER_PID[NAME].
start_server() {
    local name=$1 root=$2 log=$WORK/$1.log
    case $name in
    ours)
        # serve always loads a node inventory (DHCP and HTTP share it); TFTP alone needs only a valid one.
        [[ -f $WORK/nodes.yaml ]] || printf '%s\n' 'network:' '  server: 192.0.2.1' '  subnet: 192.0.2.0/24' \
            '  pool: 192.0.2.100-192.0.2.200' 'defaults:' '  image: bench' >"$WORK/nodes.yaml"
        taskset -c "$SERVER_CPUS" "$IMAGEBUILD" serve --root "$root" --nodes "$WORK/nodes.yaml" --no-dhcp --no-http --listen $ADDR \
            --tftp-port "${PORT[ours]}" --log-level "${OURS_LOG_LEVEL:-warning}" >"$log" 2>&1 &
        ;;
    tftpd-hpa)
        # -L foreground, -s chroot into the root; -u root so no user switch is needed.
        taskset -c "$SERVER_CPUS" in.tftpd -L -u root -s "$root" -a "$ADDR:${PORT[tftpd-hpa]}" >"$log" 2>&1 &
        ;;
    dnsmasq)
        taskset -c "$SERVER_CPUS" dnsmasq --no-daemon --conf-file=/dev/null --pid-file= --user=root --port=0 \
            --enable-tftp --tftp-root="$root" --tftp-max=1000 --listen-address=$ADDR --bind-interfaces \
            --log-facility="$log" >>"$log" 2>&1 &
        ;;
    atftpd)
        find_atftpd
        taskset -c "$SERVER_CPUS" "$ATFTPD" --daemon --no-fork --user root --group root --port "${PORT[atftpd]}" \
            --bind-address $ADDR --maxthread 1000 --logfile "$log" "$root" >>"$log" 2>&1 &
        ;;
    *) die "unknown server $name" ;;
    esac
    SERVER_PID[$name]=$!
    local probe=$WORK/probe.$name
    for _ in $(seq 1 100); do
        if curl -s -o "$probe" --max-time 2 "tftp://$ADDR:${PORT[$name]}/probe" 2>/dev/null && [[ -s $probe ]]; then
            rm -f "$probe"
            return 0
        fi
        kill -0 "${SERVER_PID[$name]}" 2>/dev/null || { cat "$log" >&2; die "$name exited at start"; }
        sleep 0.1
    done
    cat "$log" >&2
    die "$name did not answer within 10 s"
}

stop_server() {
    local name=$1 pid=${SERVER_PID[$1]:-}
    [[ -z $pid ]] && return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "SERVER_PID[$name]"
}

stop_all_servers() {
    local name
    for name in "${!SERVER_PID[@]}"; do stop_server "$name"; done
}

# fetch CLIENT SERVER FILE OUT BLKSIZE WINDOW TIMEOUT: one download, pinned, bounded by TIMEOUT seconds.
# Prints the wall time in seconds, or FAIL when the client failed, timed out or got wrong content.
fetch() {
    local client=$1 server=$2 file=$3 out=$4 blksize=$5 window=$6 timeout=$7
    local port=${PORT[$server]} started ended status
    rm -f "$out"
    started=$EPOCHREALTIME
    case $client in
    curl)
        timeout -k 5 "$timeout" taskset -c "$CLIENT_CPUS" curl -s -o "$out" --tftp-blksize "$blksize" \
            "tftp://$ADDR:$port/$file" 2>/dev/null
        ;;
    atftp)
        local options=(--option "blksize $blksize")
        [[ $window -gt 1 ]] && options+=(--option "windowsize $window")
        timeout -k 5 "$timeout" taskset -c "$CLIENT_CPUS" atftp "${options[@]}" -g -r "$file" -l "$out" \
            $ADDR "$port" >/dev/null 2>&1
        ;;
    esac
    status=$?
    ended=$EPOCHREALTIME
    if [[ $status -eq 0 ]] && cmp -s "$out" "$ROOT/$file"; then
        awk -v a="$started" -v b="$ended" 'BEGIN { printf "%.3f\n", b - a }'
    else
        echo FAIL
    fi
    rm -f "$out"
}

# median_of "t1 t2 FAIL ...": median where a failed run counts as CAP seconds (a lower bound on its
# real time), prefixed with '>' when the median itself is such a failure.
median_of() {
    local cap=$1; shift
    printf '%s\n' "$@" | awk -v cap="$cap" '
        { if ($1 == "FAIL") { v[NR] = cap; f[NR] = 1 } else { v[NR] = $1; f[NR] = 0 } }
        END {
            if (NR == 0) { print "-"; exit }
            for (i = 1; i <= NR; i++) for (j = i + 1; j <= NR; j++) if (v[j] < v[i] || (v[j] == v[i] && f[j] < f[i])) {
                t = v[i]; v[i] = v[j]; v[j] = t; t = f[i]; f[i] = f[j]; f[j] = t }
            m = int((NR + 1) / 2)
            if (NR % 2 == 1) { printf "%s%.3f\n", (f[m] ? ">" : ""), v[m] }
            else { printf "%s%.3f\n", (f[m] || f[m + 1] ? ">" : ""), (v[m] + v[m + 1]) / 2 }
        }'
}

successes_of() {
    local ok=0 total=0 value
    for value in "$@"; do total=$((total + 1)); [[ $value != FAIL ]] && ok=$((ok + 1)); done
    echo "$ok/$total"
}

# Creates a namespace and re-runs the calling script inside it with --inner; removes it afterwards.
run_in_namespace() {
    local script=$1; shift
    [[ $(id -u) -eq 0 ]] || die "needs root (network namespace, nftables)"
    command -v ip >/dev/null || die "needs iproute2"
    NS=tftpbench-$$
    ip netns add "$NS" || die "cannot create a network namespace"
    cleanup_namespace() {
        local pid
        for pid in $(ip netns pids "$NS" 2>/dev/null); do kill "$pid" 2>/dev/null; done
        sleep 0.2
        for pid in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
        ip netns del "$NS" 2>/dev/null
    }
    trap cleanup_namespace EXIT
    trap 'exit 130' INT TERM
    ip -n "$NS" link set lo up
    # glibc's getaddrinfo(AI_ADDRCONFIG) ignores 127.0.0.1, and in.tftpd then fails to resolve its own
    # -a address (exit 66, logged only to syslog): one documentation-range address on lo satisfies it.
    ip -n "$NS" addr add 192.0.2.1/32 dev lo
    ip netns exec "$NS" bash "$script" --inner "$@"
}
