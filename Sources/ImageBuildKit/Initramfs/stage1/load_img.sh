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
