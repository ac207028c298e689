/// The stage-1 programs of the initramfs. Kept as Swift strings (not bundle
/// resources) so the single `imagebuild` binary carries them wherever it is
/// copied. A recipe can replace `/init` and `/load_img.sh` with its own files.
///
/// Contract with the rest of the system (see README "Kernel command line"):
/// `imagebuild.image=URL` the stage-2 image, `imagebuild.sha256=HEX` its digest,
/// `imagebuild.server=URL` where stage reports go (`POST /api/v1/events`),
/// `imagebuild.onfail=shell|reboot`, `imagebuild.init=/sbin/init`,
/// `imagebuild.rootsize=80%` (tmpfs size), `imagebuild.format=tar.gz|squashfs`,
/// `imagebuild.token=T` the per-boot report token (sent with each report; the server hands it out
/// only when `http.report_tokens` is on).
public enum StageOneScripts {
    /// `/init`: mounts, modules, network, then sources `/load_img.sh`.
    public static func initScript(onFail: OnFail, onFailDelay: Int, retries: Int) -> String {
        #"""
        #!/bin/sh
        # imagebuild stage 1 (/init): mount, load modules, DHCP, then /load_img.sh
        # downloads the stage-2 image and switch_roots into it.
        export PATH=/sbin:/bin:/usr/sbin:/usr/bin
        mount -t proc -o nosuid,nodev,noexec proc /proc
        mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
        mount -t devtmpfs -o mode=0755 devtmpfs /dev 2>/dev/null || mdev -s
        mkdir -p /dev/pts /run /tmp && mount -t devpts devpts /dev/pts 2>/dev/null
        exec </dev/console >/dev/console 2>&1

        ONFAIL=\#(onFail.rawValue)
        ONFAIL_DELAY=\#(onFailDelay)
        RETRIES=\#(retries)
        IMAGE_URL= IMAGE_SHA256= SERVER= FORMAT=tar.gz NEWINIT=/sbin/init ROOTSIZE=80% BOOTIF= TOKEN=
        for arg in $(cat /proc/cmdline); do
            case "$arg" in
                imagebuild.image=*) IMAGE_URL="${arg#*=}" ;;
                imagebuild.sha256=*) IMAGE_SHA256="${arg#*=}" ;;
                imagebuild.server=*) SERVER="${arg#*=}" ;;
                imagebuild.onfail=*) ONFAIL="${arg#*=}" ;;
                imagebuild.init=*) NEWINIT="${arg#*=}" ;;
                imagebuild.rootsize=*) ROOTSIZE="${arg#*=}" ;;
                imagebuild.format=*) FORMAT="${arg#*=}" ;;
                imagebuild.retries=*) RETRIES="${arg#*=}" ;;
                imagebuild.token=*) TOKEN="${arg#*=}" ;;
                BOOTIF=*) BOOTIF="${arg#*=}" ;;
            esac
        done

        say() { echo "imagebuild: $*"; }
        STEP=start
        step() { STEP="$1"; shift; say "[$STEP] $*"; }

        # Stage reports are best effort: a missing server never blocks a boot for long. Three tries,
        # because on a lossy network one lost SYN can outlast a single short time-out.
        report() {
            [ -n "$SERVER" ] || return 0
            detail=$(printf '%s' "$2" | tr -d '"\\' | head -c 200)
            for try in 1 2 3; do
                timeout 4 wget -q -O /dev/null --header 'Content-Type: application/json' \
                    --post-data "{\"mac\":\"$MAC\",\"stage\":\"$1\",\"detail\":\"$detail\",\"token\":\"$TOKEN\"}" \
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
        IFACE= MAC=
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
        [ -n "$IFACE" ] || { MAC=unknown; fail "no DHCP lease on any interface ($(cat /tmp/udhcpc.log 2>/dev/null | tail -n 1))"; }
        . /run/imagebuild-net.env
        say "[network] $IFACE ($MAC) is $IP via ${ROUTER:-no router}"
        report stage1-start "$IFACE $IP kernel $(uname -r)"

        . /load_img.sh
        fail "/load_img.sh returned"
        """#
    }

    /// `/load_img.sh`: download (resume, retry, back-off), verify, unpack, switch_root.
    public static let loadImageScript = #"""
        # imagebuild stage 1 (/load_img.sh), sourced by /init: download the stage-2
        # image with retries and Range resume, verify its sha256, unpack it into a
        # tmpfs and switch_root. Uses say/step/report/fail and the variables of /init.
        [ -n "$IMAGE_URL" ] || fail "no imagebuild.image=URL on the kernel command line"
        step download "fetching $IMAGE_URL"
        IMAGE=/image.download
        attempt=0 delay=1
        while :; do
            attempt=$((attempt + 1))
            # busybox wget -T is unreliable here; bound each attempt with timeout(1).
            # -c resumes a partial download with an HTTP Range request.
            if timeout 900 wget -c -q -O "$IMAGE" "$IMAGE_URL" 2>/tmp/wget.err; then
                break
            fi
            say "download attempt $attempt/$RETRIES failed: $(tail -n 1 /tmp/wget.err 2>/dev/null)"
            [ "$attempt" -lt "$RETRIES" ] || fail "download failed $attempt times: $(tail -n 1 /tmp/wget.err)"
            sleep "$delay"
            delay=$((delay * 2)); [ "$delay" -gt 30 ] && delay=30
        done
        size=$(wc -c < "$IMAGE")
        report image-downloaded "$size bytes"

        if [ -n "$IMAGE_SHA256" ]; then
            step verify "checking sha256 of $size bytes"
            got=$(sha256sum "$IMAGE" | cut -d' ' -f1)
            if [ "$got" != "$IMAGE_SHA256" ]; then
                rm -f "$IMAGE"
                fail "sha256 mismatch: expected $IMAGE_SHA256, got $got (corrupt or wrong image)"
            fi
            say "sha256 OK"
            report image-verified "$got"
        else
            say "warning: no imagebuild.sha256 given, image not verified"
        fi

        step unpack "unpacking into tmpfs (size=$ROOTSIZE)"
        mkdir -p /newroot
        mount -t tmpfs -o "size=$ROOTSIZE,mode=0755" rootfs /newroot || fail "cannot mount a tmpfs at /newroot"
        case "$FORMAT" in
            squashfs)
                mkdir -p /ro /newroot/upper /newroot/work /merged
                mount -t squashfs -o loop,ro "$IMAGE" /ro || fail "cannot mount the squashfs image"
                mount -t overlay -o lowerdir=/ro,upperdir=/newroot/upper,workdir=/newroot/work overlay /merged ||
                    fail "cannot mount overlayfs"
                ROOT=/merged ;;
            *)
                tar -xzf "$IMAGE" -C /newroot 2>/tmp/tar.err || fail "unpacking failed: $(tail -n 1 /tmp/tar.err)"
                rm -f "$IMAGE"
                ROOT=/newroot ;;
        esac
        [ -x "$ROOT$NEWINIT" ] || [ -L "$ROOT$NEWINIT" ] || fail "the image has no $NEWINIT"

        # Hand what stage 1 learned to stage 2 (stage 2 starts with a clean /run).
        mkdir -p "$ROOT/etc/imagebuild"
        {
            echo "IMAGEBUILD_MAC=$MAC"
            echo "IMAGEBUILD_IFACE=$IFACE"
            echo "IMAGEBUILD_IP=$IP"
            echo "IMAGEBUILD_PREFIX=$PREFIX"
            echo "IMAGEBUILD_ROUTER=$ROUTER"
            echo "IMAGEBUILD_SERVER=$SERVER"
            echo "IMAGEBUILD_TOKEN=$TOKEN"
            echo "IMAGEBUILD_HOSTNAME=$HOSTNAME"
        } > "$ROOT/etc/imagebuild/boot.env"
        [ -s /etc/resolv.conf ] && cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null

        step switch-root "starting $NEWINIT"
        report switch-root "$NEWINIT"
        mkdir -p "$ROOT/dev" "$ROOT/proc" "$ROOT/sys"
        mount --move /dev "$ROOT/dev" 2>/dev/null || mount -t devtmpfs devtmpfs "$ROOT/dev"
        umount /sys /proc 2>/dev/null
        exec switch_root "$ROOT" "$NEWINIT"
        """#

    /// udhcpc hook: configures the interface and records the lease for /init.
    public static let udhcpcScript = #"""
        #!/bin/sh
        # udhcpc event hook for imagebuild stage 1.
        case "$1" in
            deconfig)
                ip addr flush dev "$interface" 2>/dev/null
                ip link set "$interface" up ;;
            bound|renew)
                prefix=${mask:-24}
                ip addr flush dev "$interface" 2>/dev/null
                ip addr add "$ip/$prefix" ${broadcast:+broadcast "$broadcast"} dev "$interface"
                ip link set "$interface" up
                gw=${router%% *}
                [ -n "$gw" ] && ip route replace default via "$gw" dev "$interface"
                : > /etc/resolv.conf
                [ -n "$domain" ] && echo "search $domain" >> /etc/resolv.conf
                for s in $dns; do echo "nameserver $s" >> /etc/resolv.conf; done
                [ -n "$hostname" ] && hostname "$hostname"
                {
                    echo "IP=$ip"
                    echo "PREFIX=$prefix"
                    echo "ROUTER=$gw"
                    echo "HOSTNAME=$hostname"
                    echo "DHCP_SERVER=$serverid"
                    echo "NEXT_SERVER=$siaddr"
                } > /run/imagebuild-net.env ;;
        esac
        exit 0
        """#
}
