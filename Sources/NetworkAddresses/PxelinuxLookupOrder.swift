/// pxelinux's lookup order for a client, as documented for PXELINUX and seen on the wire: UUID (when
/// the client sent one), `01-<mac>`, the IP in upper-case hex dropping one digit at a time (8 names),
/// then `default`. Used to name the files publish writes, by `imagebuild nodes explain`, and by the
/// boot-storm simulator's walk.
public func pxelinuxLookupOrder(mac: MACAddress, ip: IPv4Address?, uuid: String? = nil) -> [String] {
    var names: [String] = []
    if let uuid { names.append(uuid.lowercased()) }
    names.append(mac.pxelinuxName)
    if let ip {
        let hex = ip.hex
        for length in stride(from: 8, through: 1, by: -1) { names.append(String(hex.prefix(length))) }
    }
    names.append("default")
    return names.map { "pxelinux.cfg/" + $0 }
}

extension IPv4Network {
    /// The name pxelinux's walk reaches for every address of this network: the address in upper-case
    /// hex cut to `prefix / 4` digits (`C0A8016` for 192.168.1.96/28). Only a prefix that is a multiple
    /// of 4 has one; nodes.yaml refuses other ranges.
    public var pxelinuxName: String { String(address.hex.prefix(prefix / 4)) }
}

/// The GRUB configuration files a machine booting through imagebuild's GRUB entry point tries, in
/// order, after GRUB itself reads `grub.cfg` (names relative to GRUB's prefix folder, `grub/`): its own
/// `grub.cfg-01-<mac>`, then `grub.cfg-<dotted IP>` (written for pool addresses in a range), then
/// `grub.cfg-default`. Debian's GRUB 2.06 reads only `grub.cfg` over the network (no per-MAC or hex-IP
/// walk of its own: seen in the TFTP log of a real boot, `FirmwareBootTests`), and its script has no
/// arithmetic for hex, so the walk is written into `grub.cfg` (`BootRenderer.grubEntry`), dotted.
/// Used to name the files publish writes and by `imagebuild nodes explain`.
public func grubLookupOrder(mac: MACAddress, ip: IPv4Address?) -> [String] {
    ["grub.cfg", "grub.cfg-" + mac.pxelinuxName] + (ip.map { ["grub.cfg-\($0)"] } ?? []) + ["grub.cfg-default"]
}
