# shellcheck shell=sh
# imagebuild stage 1 (/load_img.sh), sourced by /init: load the stage-2 image
# into a tmpfs in one pass (download with Range resume, sha256, unpack at once)
# and switch_root. Uses say/step/report/fail and the variables of /init.
[ -n "$IMAGE_URL" ] || fail "no imagebuild.image=URL on the kernel command line"
mkdir -p /newroot
mount -t tmpfs -o "size=$ROOTSIZE,mode=0755" rootfs /newroot || fail "cannot mount a tmpfs at /newroot"

# imagebuild.need: the bytes the loaded image takes in the tmpfs. Refuse now, clearly, rather than
# die half-way with "No space left on device": the tmpfs must hold it, and memory must remain for
# the kernel and stage 2 to start (64 MiB).
gib() { awk -v b="$1" 'BEGIN { printf "%.1f GiB", b / 1073741824 }'; }
if [ -n "$NEED" ]; then
    available=$(awk '/^MemAvailable:/ { printf "%.0f", $2 * 1024 }' /proc/meminfo)
    room=$(stat -f -c '%a %S' /newroot | awk '{ printf "%.0f", $1 * $2 }')
    have=$((available - 64 * 1048576))
    [ "$room" -lt "$have" ] && have=$room
    if [ "$NEED" -gt "$have" ]; then
        step download "checking memory"
        fail "image needs $(gib "$NEED"), node has $(gib "$have") (available memory $(gib "$available") less 64 MiB, tmpfs $(gib "$room") with imagebuild.rootsize=$ROOTSIZE)"
    fi
fi

# imagebuild-fetch streams the image in one pass, hashing every byte, and continues a broken
# download from the byte it reached (HTTP Range), so the unpacker never starts over. Exit 4:
# the digest did not match; the tree it fed is then never switched into.
fetch() {
    # shellcheck disable=SC2086  # $check is empty or the two words "-s DIGEST"
    imagebuild-fetch -r "$RETRIES" $check "$@" "$IMAGE_URL" 2>/tmp/fetch.err
}
fetched() {  # $1: fetch's exit status; fails the boot unless 0
    last=$(tail -n 1 /tmp/fetch.err 2>/dev/null | sed 's/^imagebuild-fetch: //')
    case "$1" in
        0) ;;
        4) step verify "checking sha256"; fail "$last" ;;
        *) case "$last" in "HTTP "*) last="$IMAGE_URL: $last" ;; esac  # the server's answer: say to what
           fail "${last:-imagebuild-fetch exited with $1}" ;;
    esac
    say "downloaded $last"
    report image-downloaded "${last%%,*}"
    if [ -n "$IMAGE_SHA256" ]; then
        say "sha256 OK"
        report image-verified "$IMAGE_SHA256"
    fi
}
check=
if [ -n "$IMAGE_SHA256" ]; then check="-s $IMAGE_SHA256"; else say "warning: no imagebuild.sha256 given, image not verified"; fi

case "$FORMAT" in
    squashfs|erofs)
        # mounted, not unpacked: the file itself is the root (in RAM)
        IMAGE=/newroot/image.$FORMAT
        step download "fetching $IMAGE_URL"
        fetch -o "$IMAGE"
        fetched $?
        step unpack "mounting the $FORMAT image under a tmpfs overlay (size=$ROOTSIZE)"
        mkdir -p /ro /newroot/upper /newroot/work /merged
        mount -t "$FORMAT" -o loop,ro "$IMAGE" /ro || fail "cannot mount the $FORMAT image"
        mount -t overlay -o lowerdir=/ro,upperdir=/newroot/upper,workdir=/newroot/work overlay /merged ||
            fail "cannot mount overlayfs"
        ROOT=/merged ;;
    tar.gz|tar.zst)
        case "$FORMAT" in tar.zst) decompress="zstd -dcq" ;; *) decompress="gzip -dc" ;; esac
        step download "streaming $IMAGE_URL into tmpfs (size=$ROOTSIZE): download, sha256 and unpack in one pass"
        # fetch's status goes through a file: busybox ash has no PIPESTATUS
        { fetch; echo $? >/tmp/fetch.status; } | $decompress 2>/tmp/unpack.err | tar -xf - -C /newroot 2>>/tmp/unpack.err
        unpacked=$? status=$(cat /tmp/fetch.status)
        # 5: the unpacker stopped reading; its own message says why
        [ "$status" != 5 ] || { step unpack "unpacking"; fail "unpacking failed: $(tail -n 1 /tmp/unpack.err)"; }
        fetched "$status"
        step unpack "unpacked"
        [ "$unpacked" -eq 0 ] || fail "unpacking failed: $(tail -n 1 /tmp/unpack.err)"
        ROOT=/newroot ;;
    *)
        fail "unknown image format '$FORMAT' (imagebuild.format=tar.gz, tar.zst, squashfs or erofs)" ;;
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
    # shellcheck disable=SC3028  # not the shell's HOSTNAME: the lease's, from /run/imagebuild-net.env
    echo "IMAGEBUILD_HOSTNAME=$HOSTNAME"
} > "$ROOT/etc/imagebuild/boot.env"
[ -s /etc/resolv.conf ] && cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null

step switch-root "starting $NEWINIT"
report switch-root "$NEWINIT"
mkdir -p "$ROOT/dev" "$ROOT/proc" "$ROOT/sys"
mount --move /dev "$ROOT/dev" 2>/dev/null || mount -t devtmpfs devtmpfs "$ROOT/dev"
umount /sys /proc 2>/dev/null
exec switch_root "$ROOT" "$NEWINIT"
