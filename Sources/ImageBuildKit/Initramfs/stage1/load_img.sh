# shellcheck shell=sh
# imagebuild stage 1 (/load_img.sh), sourced by /init: load the stage-2 image
# into a tmpfs in one pass (download with Range resume, sha256, unpack at once)
# and switch_root. Uses say/step/report/fail and the variables of /init.
[ -n "$IMAGE_URL" ] || fail "no imagebuild.image=URL on the kernel command line"
mkdir -p /newroot
# A recipe's own /init may have mounted /newroot already (a local disk, say): then it is kept.
grep -q "^[^ ]* /newroot " /proc/mounts || mount -t tmpfs -o "size=$ROOTSIZE,mode=0755" rootfs /newroot || fail "cannot mount a tmpfs at /newroot"

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

# The node's own files, laid over the root before any of it runs: the overlay archives (static,
# from the boot root, content-addressed: each name is its sha256, which imagebuild-fetch checks),
# then the secrets, which the boot server renders per request and hands out only to the node's
# address, from a privileged source port (-P: on the node only root can bind one), inside the
# node's boot window, and with matching SMBIOS values when the inventory has them. All of them are
# fetched first thing, right after stage 1's own DHCP (the window opens at its acknowledgement,
# however long the image then takes), the secrets first, in the image's own imagebuild-fetch and
# before the image, over its one kept-alive connection (in a boot storm the server pays per
# connection): kept in stage 1's RAM and laid over the root after the image. With the swarm, they
# are fetched on their own before it.
# Each archive is a tar of paths relative to the root with mode and numeric owner, gzip'd (the
# secrets, and overlays/<sha256>.tar.gz) or xz'd (overlays/<sha256>.tar.xz: large shared files, an
# /etc/hosts over the cluster, which every node of a storm fetches, 5x smaller); owners given
# by name (they live in the image's /etc/passwd, which the server cannot read) come in
# etc/imagebuild/owners, "OWNER[:GROUP] PATH" a line, applied with the image's own chown. A
# refusal (HTTP 403) fails the boot with the server's reason.
# NODE_FILE_URLS: how many URLs the node's files are (the secrets, each archive), checked here:
# fetch may run in a pipeline's subshell, which can neither fail the boot nor tell its caller.
NODE_FILES=none NODE_FILE_URLS=0
if [ -n "$OVERLAY_URLS$SECRETS_URL" ]; then
    NODE_FILES=pending
    [ -z "$SECRETS_URL" ] || NODE_FILE_URLS=1
    for url in $(echo "$OVERLAY_URLS" | tr , ' '); do
        name=${url##*/} digest=${name%.tar.[gx]z}
        # the name is the archive's sha256 (publish writes overlays/<sha256>.tar.gz or .tar.xz)
        case "$digest" in
            *[!0-9a-f]*|'') step overlay "checking the node's files"; fail "overlay: $url is not named by its sha256" ;;
        esac
        [ ${#digest} -eq 64 ] || { step overlay "checking the node's files"; fail "overlay: $url is not named by its sha256"; }
        NODE_FILE_URLS=$((NODE_FILE_URLS + 1))
    done
    say "[overlay] the node's own files come first, in the image's fetch: ${OVERLAY_URLS:-no archive}${SECRETS_URL:+ and its secrets from $SECRETS_URL (from a privileged port)}"
fi
smbios() {  # /sys/class/dmi/id/$1 in printable ASCII, trimmed; empty when unreadable
    [ -r "/sys/class/dmi/id/$1" ] || return 0
    tr -cd ' -~' < "/sys/class/dmi/id/$1" | sed 's/^ *//; s/ *$//'
}
# imagebuild-fetch, streaming the image in one pass, hashing every byte, and continuing a broken
# download from the byte it reached (HTTP Range), so the unpacker never starts over; the node's
# files first while they are pending (then every archive is in /tmp/overlay-N.tar.gz or .tar.xz, the
# secrets in /tmp/secrets.tar.gz). "$@": the image's own -o FILE, if any; --files-only: no image.
# Exit 4: a digest did not match; the tree the image fed is then never switched into.
fetch() {
    image=$IMAGE_URL
    [ "$1" = --files-only ] && { image=''; shift; }
    mine=$#  # the image's own arguments, moved after the node's files below
    if [ "$NODE_FILES" = pending ]; then
        if [ -n "$SECRETS_URL" ]; then
            # the node's SMBIOS values go along as headers, for the server to compare
            set -- "$@" -P
            for pair in product_uuid=X-Imagebuild-Product-UUID product_serial=X-Imagebuild-Product-Serial \
                        chassis_asset_tag=X-Imagebuild-Asset-Tag; do
                value=$(smbios "${pair%%=*}")
                [ "${pair%%=*}" = product_uuid ] && value=$(echo "$value" | tr A-F a-f)
                [ -n "$value" ] && set -- "$@" -H "${pair#*=}: $value"
            done
            set -- "$@" -o /tmp/secrets.tar.gz "$SECRETS_URL"
        fi
        index=0
        for url in $(echo "$OVERLAY_URLS" | tr , ' '); do
            index=$((index + 1))
            name=${url##*/}
            # named by its sha256 (checked above), the archive's own suffix kept: it says how to unpack it
            set -- "$@" -o "/tmp/overlay-$index.${name#*.}" -s "${name%.tar.[gx]z}" "$url"
        done
        while [ "$mine" -gt 0 ]; do set -- "$@" "$1"; shift; mine=$((mine - 1)); done
    fi
    # shellcheck disable=SC2086  # $check is empty or the two words "-s DIGEST"
    imagebuild-fetch -r "$RETRIES" "$@" ${image:+$check "$image"} 2>/tmp/fetch.err
}
# After a fetch with the node's files: fails the boot at step overlay when one of them failed.
# imagebuild-fetch ends on the first URL that fails and writes "N bytes in ..." for each one done.
node_files_fetched() {  # $1: fetch's exit status
    [ "$NODE_FILES" = pending ] || return 0
    if [ "$1" -ne 0 ] && [ "$(grep -c '^imagebuild-fetch: [0-9]* bytes in ' /tmp/fetch.err)" -lt "$NODE_FILE_URLS" ]; then
        rm -f /tmp/secrets.tar.gz /tmp/overlay-*.tar.?z
        step overlay "fetching the node's own files"
        last=$(tail -n 1 /tmp/fetch.err 2>/dev/null | sed 's/^imagebuild-fetch: //')
        case "$last" in
            # "HTTP 403 Forbidden: <the server's reason>" fails as "403 <the server's reason>"
            "HTTP "[0-9][0-9][0-9]*": "*) last=${last#HTTP }; fail "${last%% *} ${last#*: }" ;;
            "HTTP "[0-9][0-9][0-9]*) fail "${last#HTTP }" ;;
        esac
        fail "${last:-imagebuild-fetch exited with $1}"
    fi
    NODE_FILES=fetched
}
node_files() {  # $1 the .tar.gz or .tar.xz, $2 overlay|secrets: laid over $ROOT, its owners applied, then deleted
    owners="$ROOT/etc/imagebuild/owners"
    rm -f "$owners"  # stage 1's folder in the image: only the tar's own owners file counts
    case "$1" in *.xz) unpack=-xJvf ;; *) unpack=-xzvf ;; esac
    # --numeric-owner: the tar's uid/gid as they are, never mapped through stage 1's own names
    tar --numeric-owner "$unpack" "$1" -C "$ROOT" >/tmp/node-files.list 2>/tmp/node-files.err ||
        { rm -f "$1"; fail "$2: unpacking failed: $(tail -n 1 /tmp/node-files.err)"; }
    rm -f "$1"
    n=$(grep -Evc '/$|^(\./)?etc/imagebuild/owners$' /tmp/node-files.list)
    files=$((files + n))
    named=0
    if [ -f "$owners" ]; then
        while IFS= read -r line || [ -n "$line" ]; do
            case "$line" in
                '') continue ;;
                [!\ ]*" "?*) owner=${line%% *} path=${line#* } ;;
                *) fail "$2: etc/imagebuild/owners: not 'OWNER[:GROUP] PATH': $line" ;;
            esac
            chroot "$ROOT" chown -h "$owner" "/${path#/}" 2>/tmp/chown.err ||
                fail "$2: chown $owner /${path#/} in the image: $(tail -n 1 /tmp/chown.err)"
            named=$((named + 1))
        done < "$owners"
        rm -f "$owners"
    fi
    say "[overlay] $2: $n files laid over the root; owners by name: $named"
}

fetched() {  # $1: fetch's exit status; fails the boot unless 0
    node_files_fetched "$1"
    last=$(tail -n 1 /tmp/fetch.err 2>/dev/null | sed 's/^imagebuild-fetch: //')
    case "$1" in
        0) ;;
        4) step verify "checking sha256"; fail "$last" ;;
        *) case "$last" in "HTTP "*) last="$IMAGE_URL: $last" ;; esac  # the server's answer: say to what
           fail "${last:-imagebuild-fetch exited with $1}" ;;
    esac
    say "downloaded $last"
    report_later image-downloaded "${last%%,*}"
    if [ -n "$IMAGE_SHA256" ]; then
        say "sha256 OK"
        report_later image-verified "$IMAGE_SHA256"
    fi
}
# distribution: p2p (imagebuild.torrent=): aria2c fetches the image from the other nodes booting it
# and from the boot server's own BitTorrent seeder, peers first: the torrent's web seed (BEP 19, the
# server's HTTP) is taken out at the start and put back only when the swarm gives this node nothing:
# no peer at all for SWARM_STALL seconds (the tracker or every peer unreachable), or peers but no
# byte for SWARM_STALL_PEERS seconds (a node waiting its turn among many is not stalled: in a storm
# most nodes are choked at first, and a web seed for each of them took most of the server's uplink).
# So a node that finds no peer still gets every byte. (A web seed used from the start spreads the
# server's uplink over hundreds of half-fetched pieces, and the nodes have little to give each other.) aria2c checks each piece against the torrent's SHA-1, and
# the whole file is then checked against imagebuild.sha256 as an HTTP download is. aria2c goes on
# after switch_root, seeding the file it wrote (the mounted image) for imagebuild.seed= seconds,
# then exits by itself: no daemon stays on the node. Whatever fails in the swarm, the image comes
# over HTTP instead. aria2c is steered through its JSON-RPC on 127.0.0.1, with a random secret.
# $1: the image file (its name is the torrent's). 0: the file is complete, not yet checked.
SWARM_PID=
SWARM_STALL=${SWARM_STALL:-20}
SWARM_STALL_PEERS=${SWARM_STALL_PEERS:-90}
SWARM_GID=0000000000000001
# (timeout(1), not wget -T: busybox v1.35.0's static wget crashes given -T with --post-data)
swarm_rpc() {  # $1: method; $2: parameters after the secret and the download's id, each with a leading comma
    timeout 5 wget -q -O - --header 'Content-Type: application/json' \
        --post-data "{\"jsonrpc\":\"2.0\",\"id\":\"s\",\"method\":\"aria2.$1\",\"params\":[\"token:$SWARM_SECRET\",\"$SWARM_GID\"$2]}" \
        http://127.0.0.1:6800/jsonrpc 2>/dev/null
}
swarm_fetch() {
    [ -n "$TORRENT_URL" ] || return 1
    command -v aria2c >/dev/null || { say "warning: imagebuild.torrent= given but this initramfs has no aria2c (initramfs.p2p)"; return 1; }
    imagebuild-fetch -r "$RETRIES" -o /tmp/image.torrent "$TORRENT_URL" 2>/tmp/fetch.err ||
        { say "swarm: the torrent: $(tail -n 1 /tmp/fetch.err | sed 's/^imagebuild-fetch: //')"; return 1; }
    rm -f /tmp/swarm.done
    printf '#!/bin/sh\n: > /tmp/swarm.done\n' > /tmp/swarm-done && chmod 755 /tmp/swarm-done
    minutes=$(awk -v s="$SEED_TIME" 'BEGIN { printf "%.2f", s / 60 }')
    SWARM_SECRET=$(tr -d '-' < /proc/sys/kernel/random/uuid)  # 122 random bits
    ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up  # aria2c's RPC listens on 127.0.0.1
    # No DHT, local discovery or peer exchange: the tracker (the boot server) alone says who the
    # peers are, nodes of this cluster only, rack-local first. Added paused, so the web seed can be
    # taken out before the first request.
    setsid aria2c --dir="${1%/*}" --seed-time="$minutes" --seed-ratio=0.0 --file-allocation=none \
        --enable-dht=false --enable-dht6=false --bt-enable-lpd=false --enable-peer-exchange=false \
        --bt-tracker-connect-timeout=10 --bt-tracker-timeout=20 --stream-piece-selector=random \
        --enable-rpc=true --rpc-listen-port=6800 --rpc-secret="$SWARM_SECRET" --pause=true --gid="$SWARM_GID" \
        --on-bt-download-complete=/tmp/swarm-done --summary-interval=0 --console-log-level=error \
        --log=/tmp/aria2c.log --log-level=warn -T /tmp/image.torrent </dev/null >/dev/null 2>&1 &
    SWARM_PID=$!
    tries=0
    until swarm_rpc tellStatus ',["status"]' >/dev/null; do
        tries=$((tries + 1))
        if [ "$tries" -ge 50 ] || ! kill -0 "$SWARM_PID" 2>/dev/null; then
            say "swarm: aria2c does not answer: $(tail -n 1 /tmp/aria2c.log 2>/dev/null)"
            swarm_stop
            return 1
        fi
        sleep 0.1
    done
    case "$(swarm_rpc changeUri ",1,[\"$IMAGE_URL\"],[]")" in
        *'"result":[1,'*) webseed= ;;
        *) webseed=kept; say "swarm: the torrent's web seed is not $IMAGE_URL; aria2c uses it from the start" ;;
    esac
    swarm_rpc unpause '' >/dev/null
    last='' stalled=0
    while [ ! -e /tmp/swarm.done ] && kill -0 "$SWARM_PID" 2>/dev/null; do
        sleep 1
        status=$(swarm_rpc tellStatus ',["status","completedLength","connections"]')
        # Parsed in the shell, without a process per field: this runs every second.
        got='' peers=''
        case "$status" in *'"completedLength":"'*) got=${status#*\"completedLength\":\"} got=${got%%\"*} ;; esac
        case "$status" in *'"connections":"'*) peers=${status#*\"connections\":\"} peers=${peers%%\"*} ;; esac
        # aria2c keeps running for its RPC when the download itself ends in an error: nothing more
        # would come, so the swarm is given up and stage 1 fetches over HTTP.
        case "$status" in
            *'"status":"error"'*|*'"status":"removed"'*) break ;;
        esac
        if [ "$got" = "$last" ]; then stalled=$((stalled + 1)); else stalled=0 last=$got; fi
        if [ -z "$webseed" ] && [ "$stalled" -ge "$SWARM_STALL" ] && { [ "${peers:-0}" -eq 0 ] || [ "$stalled" -ge "$SWARM_STALL_PEERS" ]; }; then
            swarm_rpc changeUri ",1,[],[\"$IMAGE_URL\"]" >/dev/null
            say "swarm: nothing from ${peers:-0} peers in $stalled s ($((${last:-0} >> 20)) MiB so far): the server's web seed joins"
            webseed=added stalled=0
        elif [ -n "$webseed" ] && [ "$stalled" -ge "$SWARM_STALL_PEERS" ]; then
            # Not even the web seed moves a byte: the plain HTTP loader, with its retries, does better.
            say "swarm: nothing in $stalled s with the web seed ($((${last:-0} >> 20)) MiB so far)"
            break
        fi
    done
    if [ ! -e /tmp/swarm.done ] || [ ! -f "$1" ]; then
        say "swarm: aria2c ended without the image: $(tail -n 1 /tmp/aria2c.log 2>/dev/null)"
        swarm_stop
        return 1
    fi
    return 0
}
swarm_stop() {  # a bad or unfinished download is never seeded
    [ -n "$SWARM_PID" ] && kill "$SWARM_PID" 2>/dev/null
    SWARM_PID=
    rm -f "$IMAGE"
}

check=
if [ -n "$IMAGE_SHA256" ]; then check="-s $IMAGE_SHA256"; else say "warning: no imagebuild.sha256 given, image not verified"; fi

case "$FORMAT" in
    squashfs|erofs)
        # mounted, not unpacked: the file itself is the root (in RAM)
        IMAGE=/newroot/image.$FORMAT
        step download "fetching $IMAGE_URL${TORRENT_URL:+ from the swarm ($TORRENT_URL)}"
        if [ -n "$TORRENT_URL" ] && [ "$NODE_FILES" = pending ]; then
            # the swarm's image is not fetched by imagebuild-fetch: the node's files go first on their own
            fetch --files-only
            node_files_fetched $?
        fi
        started=$(cut -d' ' -f1 /proc/uptime)
        if swarm_fetch "$IMAGE"; then
            took=$(awk -v a="$started" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.1f", b - a }')
            if [ -z "$IMAGE_SHA256" ] || imagebuild-fetch -c "$IMAGE" -s "$IMAGE_SHA256" 2>/tmp/fetch.err; then
                say "swarm: $(stat -c %s "$IMAGE") bytes in $took s; seeding for $SEED_TIME s after switch_root"
                report_later image-downloaded "$(stat -c %s "$IMAGE") bytes from the swarm in $took s"
                [ -z "$IMAGE_SHA256" ] || { say "sha256 OK"; report_later image-verified "$IMAGE_SHA256"; }
            else
                say "swarm: $(tail -n 1 /tmp/fetch.err | sed 's/^imagebuild-fetch: //'); fetching over HTTP"
                swarm_stop
                TORRENT_URL=
            fi
        fi
        if [ ! -f "$IMAGE" ]; then
            fetch -o "$IMAGE"
            fetched $?
        fi
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
        node_files_fetched "$status"  # a node's file that failed fails at step overlay, whatever the unpacker says
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

if [ -n "$OVERLAY_URLS$SECRETS_URL" ]; then
    step overlay "laying the node's own files over the root"
    files=0
    index=1  # in the command line's order: a later archive's file replaces an earlier one's
    while :; do
        archive=/tmp/overlay-$index.tar.gz
        [ -f "$archive" ] || archive=/tmp/overlay-$index.tar.xz
        [ -f "$archive" ] || break
        node_files "$archive" overlay
        index=$((index + 1))
    done
    [ -z "$SECRETS_URL" ] || node_files /tmp/secrets.tar.gz secrets
    report_later overlay "$files files"
fi

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
