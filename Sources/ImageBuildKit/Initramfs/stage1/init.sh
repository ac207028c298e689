#!/bin/sh
# imagebuild stage 1 (/init): mount, load modules, DHCP, then /load_img.sh
# downloads the stage-2 image and switch_roots into it.
# shellcheck source-path=SCRIPTDIR  # lint with -x: /load_img.sh is load_img.sh next to this file
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o mode=0755 devtmpfs /dev 2>/dev/null || mdev -s
mkdir -p /dev/pts /run /tmp && mount -t devpts devpts /dev/pts 2>/dev/null
exec </dev/console >/dev/console 2>&1

# The recipe's initramfs.onfail, onfail_delay and download_retries, written by
# imagebuild build into /etc/imagebuild/stage1.conf; these defaults are the
# recipe's defaults. The kernel command line overrides them (below).
ONFAIL=reboot
ONFAIL_DELAY=30
RETRIES=8
# shellcheck source=/dev/null  # written by the build, not part of this tree
[ -r /etc/imagebuild/stage1.conf ] && . /etc/imagebuild/stage1.conf
IMAGE_URL='' IMAGE_SHA256='' SERVER='' FORMAT=tar.gz NEED='' NEWINIT=/sbin/init ROOTSIZE=80% BOOTIF='' TOKEN=''
OVERLAY_URLS='' SECRETS_URL='' TORRENT_URL='' SEED_TIME=600
# shellcheck disable=SC2013  # the command line is words, split on purpose
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        imagebuild.image=*) IMAGE_URL="${arg#*=}" ;;
        imagebuild.sha256=*) IMAGE_SHA256="${arg#*=}" ;;
        imagebuild.server=*) SERVER="${arg#*=}" ;;
        imagebuild.onfail=*) ONFAIL="${arg#*=}" ;;
        imagebuild.init=*) NEWINIT="${arg#*=}" ;;
        imagebuild.rootsize=*) ROOTSIZE="${arg#*=}" ;;
        imagebuild.format=*) FORMAT="${arg#*=}" ;;
        imagebuild.need=*) NEED="${arg#*=}" ;;
        imagebuild.retries=*) RETRIES="${arg#*=}" ;;
        imagebuild.token=*) TOKEN="${arg#*=}" ;;
        imagebuild.overlay=*) OVERLAY_URLS="${arg#*=}" ;;
        imagebuild.secrets=*) SECRETS_URL="${arg#*=}" ;;
        imagebuild.torrent=*) TORRENT_URL="${arg#*=}" ;;
        imagebuild.seed=*) SEED_TIME="${arg#*=}" ;;
        BOOTIF=*) BOOTIF="${arg#*=}" ;;
    esac
done

say() { echo "imagebuild: $*"; }
STEP=start
step() { STEP="$1"; shift; say "[$STEP] $*"; }

# Stage reports are best effort: a missing server never blocks a boot for long. Three tries,
# because on a lossy network one lost SYN can outlast a single short time-out.
# `report_later` queues a report; the next `report` sends the queue and its own in one POST (a
# batch, each with the seconds since it happened, "ago", so the timeline keeps its time). The
# steps from the image's arrival to switch_root come within seconds, and each POST is a wget and
# a connection, which a boot storm pays for thousands of nodes at once.
QUEUED=''
uptime_cs() {  # UPTIME_CS: /proc/uptime in hundredths of a second, without a process
    read -r up _ < /proc/uptime
    UPTIME_CS=$(( ${up%.*} * 100 + 1${up#*.} - 100 ))  # "1" before the hundredths: never octal
}
report_later() {
    [ -n "$SERVER" ] || return 0
    uptime_cs
    # shellcheck disable=SC1003  # for tr: the set { " \ } and the control bytes; no quote escaped
    QUEUED="$QUEUED$1 $UPTIME_CS $(printf '%s' "$2" | tr -d '"\\\000-\037' | head -c 200)
"
}
report() {
    report_later "$1" "$2"
    [ -n "$SERVER" ] || return 0
    uptime_cs
    events='' rest=$QUEUED
    while [ -n "$rest" ]; do
        line=${rest%%"
"*} rest=${rest#*"
"}
        stage=${line%% *} line=${line#* }
        ago=$((UPTIME_CS - ${line%% *}))
        events="$events${events:+,}{\"stage\":\"$stage\",\"detail\":\"${line#* }\",\"ago\":$((ago / 100)).$((ago / 10 % 10))$((ago % 10))}"
    done
    QUEUED=''
    for _ in 1 2 3; do
        timeout 4 wget -q -O /dev/null --header 'Content-Type: application/json' \
            --post-data "{\"mac\":\"$MAC\",\"token\":\"$TOKEN\",\"events\":[$events]}" \
            "$SERVER/api/v1/events" 2>/dev/null && return 0
    done
    return 0
}

fail() {
    say "FAILED at step '$STEP': $*"
    report failed "$STEP: $*"
    if [ "$ONFAIL" = shell ]; then
        say "dropping to a shell (exit to retry the boot)"
        setsid cttyhack sh || sh
        exec /init
    fi
    say "rebooting in $ONFAIL_DELAY s"
    sleep "$ONFAIL_DELAY"
    reboot -f
}

step kernel "stage 1 started on $(uname -r)"
say "command line: $(cat /proc/cmdline)"
step modules "loading $(grep -c . /modules.txt 2>/dev/null || echo 0) modules"
if [ -s /modules.txt ]; then
    while read -r module; do
        [ -n "$module" ] || continue
        name=${module##*/}; name=${name%%.ko*}
        grep -q "^$(echo "$name" | tr - _) " /proc/modules 2>/dev/null && continue
        insmod "$module" 2>/tmp/insmod.err ||
            grep -q 'File exists' /tmp/insmod.err || say "warning: $name: $(cat /tmp/insmod.err)"
    done < /modules.txt
fi

# BOOTIF (pxelinux IPAPPEND 2) names the NIC that booted: try it first.
step network "waiting for a network link"
want=$(echo "${BOOTIF#01-}" | tr - : | tr A-F a-f)
IFACE='' MAC=''
round=0
while [ -z "$IFACE" ] && [ $round -lt "$RETRIES" ]; do
    round=$((round + 1))
    list=
    for dev in /sys/class/net/*; do
        name=${dev##*/}
        [ "$name" = lo ] && continue
        [ -e "$dev/device" ] || [ -e "$dev/phy80211" ] || [ "${name#e}" != "$name" ] || continue
        addr=$(cat "$dev/address")
        if [ -n "$want" ] && [ "$addr" = "$want" ]; then list="$name $list"; else list="$list $name"; fi
    done
    [ -n "$list" ] || { sleep 1; continue; }
    for name in $list; do
        ip link set "$name" up 2>/dev/null
        say "DHCP on $name (round $round)"
        if udhcpc -i "$name" -n -q -f -t 4 -T 2 -A 1 -s /etc/udhcpc.script >/tmp/udhcpc.log 2>&1; then
            IFACE=$name
            MAC=$(cat "/sys/class/net/$name/address")
            break
        fi
        ip link set "$name" down 2>/dev/null
    done
    [ -n "$IFACE" ] || sleep $((round < 5 ? round : 5))
done
[ -n "$IFACE" ] || { MAC=unknown; fail "no DHCP lease on any interface ($(tail -n 1 /tmp/udhcpc.log 2>/dev/null))"; }
# shellcheck source=/dev/null  # written by /etc/udhcpc.script when the lease is bound
. /run/imagebuild-net.env
say "[network] $IFACE ($MAC) is $IP via ${ROUTER:-no router}"
report stage1-start "$IFACE $IP kernel $(uname -r)"

# shellcheck source=load_img.sh
. /load_img.sh
fail "/load_img.sh returned"
