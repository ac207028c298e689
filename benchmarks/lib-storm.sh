# shellcheck shell=bash
# Shared by benchmarks/boot-storm.sh and benchmarks/node-identity.sh (sourced, not run).

# synthetic_artifacts DIR KERNEL_KIB INITRD_KIB IMAGE_KIB: an artifacts folder `imagebuild publish`
# takes (random kernel, initramfs and image of those sizes, their manifest.json), named "storm".
synthetic_artifacts() {
    local art=$1 f files_json='' image_sha
    mkdir -p "$art"
    head -c $(($2 * 1024)) /dev/urandom > "$art/vmlinuz"
    head -c $(($3 * 1024)) /dev/urandom > "$art/initramfs.img"
    head -c $(($4 * 1024)) /dev/urandom > "$art/image.tar.gz"
    image_sha=$(sha256sum "$art/image.tar.gz" | cut -d' ' -f1)
    echo "console=ttyS0 imagebuild.sha256=$image_sha" > "$art/cmdline"
    for f in vmlinuz initramfs.img image.tar.gz cmdline; do
        files_json+="${files_json:+,} \"$f\": {\"sha256\": \"$(sha256sum "$art/$f" | cut -d' ' -f1)\", \"size\": $(stat -c %s "$art/$f")}"
    done
    cat > "$art/manifest.json" <<JSON
{ "name": "storm", "toolVersion": "0.1.0", "recipeDigest": "storm", "sourceDateEpoch": 0,
  "kernelVersion": "storm", "cmdline": "console=ttyS0 imagebuild.sha256=$image_sha", "imageFormat": "tar.gz",
  "initramfsCompression": "none", "modules": [], "files": {$files_json} }
JSON
}

# storm_nodes FILE N REGISTERED HOST_KEYS SECRETS_DIR: nodes.yaml on 10.200.0.0/16 (server .0.1, pool
# 10.200.64.1-10.200.127.254). With REGISTERED=1, N nodes are listed as imagebuild-storm numbers them
# (MAC 02:53:54:00:00:00 + i, fixed addresses from 10.200.128.1), each with a file rendered per node,
# one rendered over the whole cluster and a secret (SECRETS_DIR/munge.key, made here); HOST_KEYS is
# their ssh_host_keys (none or persistent).
storm_nodes() {
    local file=$1 n=$2 registered=$3 host_keys=$4 secrets=$5
    cat > "$file" <<YAML
network:
  server: 10.200.0.1
  subnet: 10.200.0.0/16
  router: 10.200.0.1
  pool: 10.200.64.1-10.200.127.254
  lease_time: 3600
  http_port: 80
  bios_loader: lpxelinux.0
defaults:
  image: storm
YAML
    [ "$registered" = 1 ] || return 0
    mkdir -p "$secrets" && head -c 1024 /dev/urandom > "$secrets/munge.key" && chmod 600 "$secrets/munge.key"
    cat >> "$file" <<YAML
  ssh_host_keys: $host_keys
  vars: {cluster: storm}
  files:
    - {path: /etc/motd, content: "{{hostname}} ({{ip}}) of {{vars.cluster}}\\n"}
    - path: /etc/slurm/nodes.conf
      content: |
        {{#nodes}}NodeName={{hostname}} NodeAddr={{ip}}
        {{/nodes}}
    - {path: /etc/munge/munge.key, source: $secrets/munge.key, secret: true, template: false, mode: "0400"}
nodes:
YAML
    awk -v n="$n" 'BEGIN { for (i = 0; i < n; i++) printf "  - {mac: \"02:53:54:00:%02x:%02x\", hostname: n%05d, ip: 10.200.%d.%d}\n", int(i / 256), i % 256, i, 128 + int((i + 1) / 256), (i + 1) % 256 }' >> "$file"
}
