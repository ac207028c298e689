#!/bin/bash
# Captures real DHCP client packets for the BootProtocols golden tests.
# Run as root: capture.sh OUTDIR. Everything happens inside two network
# namespaces this script creates (client side and server side joined by a veth
# pair; QEMU's tap sits in the server-side bridge), nothing touches a host
# interface, and every client runs under `timeout`. The addresses are from
# TEST-NET-1 (192.0.2.0/24) and exist only inside the namespaces.
set -u
OUT=${1:?usage: capture.sh OUTDIR}
mkdir -p "$OUT"
C=ibdhcpcap-c S=ibdhcpcap-s
TMP=$(mktemp -d)
cleanup() {
    [ -n "${DNSMASQ_PID:-}" ] && kill "$DNSMASQ_PID" 2>/dev/null
    ip netns del $C 2>/dev/null; ip netns del $S 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
ip netns add $C; ip netns add $S
ip link add ibcap-c type veth peer name ibcap-s
ip link set ibcap-c netns $C; ip link set ibcap-s netns $S
ip -n $C link set lo up
ip -n $C link set ibcap-c address 02:00:00:00:00:c1 up
ip -n $S link set lo up
ip -n $S link add br0 type bridge stp_state 0 forward_delay 0
ip -n $S link set ibcap-s master br0 up
ip -n $S tuntap add tap0 mode tap
ip -n $S link set tap0 master br0 up
ip -n $S link set br0 up

start_capture() {  # name
    ip netns exec $S tcpdump -q -U -i br0 -w "$OUT/$1.pcap" 'udp and (port 67 or port 68 or port 4011)' 2>/dev/null &
    TCPDUMP_PID=$!
    sleep 1
}
stop_capture() { sleep 1; kill "$TCPDUMP_PID"; wait "$TCPDUMP_PID" 2>/dev/null; }

start_dnsmasq() {
    ip -n $S addr add 192.0.2.1/24 dev br0
    ip netns exec $S dnsmasq --no-daemon --user=root --port=0 --interface=br0 --bind-interfaces \
        --dhcp-range=192.0.2.100,192.0.2.150,255.255.255.0,1h --dhcp-leasefile="$TMP/leases" \
        --pid-file="$TMP/dnsmasq.pid" --no-ping --dhcp-boot=pxelinux.0 --log-dhcp 2>"$TMP/dnsmasq.log" &
    DNSMASQ_PID=$!
    sleep 1
}
stop_dnsmasq() { kill "$DNSMASQ_PID"; wait "$DNSMASQ_PID" 2>/dev/null; DNSMASQ_PID=; ip -n $S addr flush dev br0; }

qemu() {  # seconds, extra args...
    local secs=$1; shift
    ip netns exec $S timeout "$secs" qemu-system-x86_64 -accel tcg -nographic -nodefaults -m 512 \
        -serial stdio -boot n -netdev tap,id=n0,ifname=tap0,script=no,downscript=no "$@" </dev/null
}

# 1. DISCOVERs with nobody answering.
start_capture udhcpc-unanswered
ip netns exec $C timeout 10 udhcpc -f -n -q -i ibcap-c -t 2 -T 2 -s /bin/true >/dev/null 2>&1
stop_capture
start_capture dhclient-unanswered
ip netns exec $C timeout 10 dhclient -d -1 -sf /bin/true -lf "$TMP/dhclient.leases" -pf "$TMP/dhclient.pid" ibcap-c >/dev/null 2>&1
stop_capture
start_capture ipxe-bios-unanswered
qemu 25 -device virtio-net-pci,netdev=n0,mac=52:54:00:00:00:b1 >"$OUT/ipxe-bios-unanswered.console" 2>&1
stop_capture
start_capture edk2-uefi-unanswered
qemu 240 -bios /usr/share/ovmf/OVMF.fd -device virtio-net-pci,netdev=n0,mac=52:54:00:00:00:e1,romfile= >"$OUT/edk2-uefi-unanswered.console" 2>&1
stop_capture

# 2. Full exchanges against dnsmasq (gives real REQUESTs and a second opinion on replies).
start_dnsmasq
start_capture udhcpc-dnsmasq
ip netns exec $C timeout 10 udhcpc -f -n -q -i ibcap-c -t 3 -T 2 -s /bin/true >/dev/null 2>&1
stop_capture
start_capture dhclient-dnsmasq
ip netns exec $C timeout 10 dhclient -d -1 -sf /bin/true -lf "$TMP/dhclient2.leases" -pf "$TMP/dhclient2.pid" ibcap-c >/dev/null 2>&1
ip netns exec $C timeout 10 dhclient -d -r -sf /bin/true -lf "$TMP/dhclient2.leases" -pf "$TMP/dhclient2.pid" ibcap-c >/dev/null 2>&1
stop_capture
start_capture ipxe-bios-dnsmasq
qemu 25 -device virtio-net-pci,netdev=n0,mac=52:54:00:00:00:b2 >"$OUT/ipxe-bios-dnsmasq.console" 2>&1
stop_capture
cp "$TMP/dnsmasq.log" "$OUT/dnsmasq.log"
stop_dnsmasq
