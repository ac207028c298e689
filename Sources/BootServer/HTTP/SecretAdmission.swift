import BootProtocols
import Foundation
import ImageBuildKit
import Synchronization

/// Who gets a node's secrets (`GET /boot/v1/secrets/<mac>`): SSH host keys, munge keys, site
/// certificates. Pure: the lookups come in as values and functions, so every rule is table-tested.
///
/// One process answers DHCP, TFTP and HTTP, so it knows which address it gave to which MAC and when
/// that machine started booting. A request is served only when all of these hold, checked in this
/// order (the first that fails is the refusal's reason):
/// 1. the MAC is a node of the inventory that has secrets;
/// 2. the request comes from the address the inventory (`ip:`) or a live lease gives that MAC
///    (`NodeAddressRule`, which cloud-init data follows too);
/// 3. from a privileged source port (< 1024): only root on that machine can open one, so a user
///    logged in on a running node cannot ask for it;
/// 4. inside the node's boot window: from the last DHCP ACK (or first boot file) of its current boot
///    until `window` seconds later; stage 1 asks right after its own DHCP, before the image download;
/// 5. at most `perBoot` times per boot (default once): a second ask in the same boot is refused, so
///    whoever comes second, the node or an impostor, is seen;
/// 6. the SMBIOS values the inventory names for the node (`smbios:`) match what stage 1 sent.
/// Every refusal is a 403 with its reason (also logged, counted by reason and put on the node's
/// timeline); the secret's bytes are never part of one.
struct SecretAdmission: Sendable {
    enum Reason: String, CaseIterable, Sendable {
        case notANode = "not-a-node"
        case noSecrets = "no-secrets"
        case address = "wrong-address"
        case port = "unprivileged-port"
        case window = "outside-boot-window"
        case fetched = "already-fetched"
        case smbios = "smbios-mismatch"
    }

    struct Refusal: Error, Equatable, Sendable {
        var reason: Reason
        var message: String
    }

    /// The addresses the server ties to a MAC (fixed address, live lease).
    var addressesOf: @Sendable (MACAddress) -> [IPv4Address]
    var window: TimeInterval
    var perBoot: Int

    /// What stage 1 sent as SMBIOS values (`X-Imagebuild-Product-UUID`, `-Product-Serial`, `-Asset-Tag`).
    typealias SMBIOSHeaders = (uuid: String?, serial: String?, assetTag: String?)

    /// - Parameters:
    ///   - delivered: how many times this boot (`state.boot`) already got its secrets.
    func decide(mac: MACAddress, node: Inventory.Node?, hasSecrets: Bool, remote: IPv4Address?, port: Int?,
                state: NodeBootState?, delivered: Int, smbios: SMBIOSHeaders, now: Date) -> Refusal? {
        guard let node else { return Refusal(reason: .notANode, message: "\(mac) is not a node in nodes.yaml") }
        guard hasSecrets else { return Refusal(reason: .noSecrets, message: "\(node.hostname) has no secret files and no persistent host keys") }
        if let message = NodeAddressRule(addressesOf: addressesOf).refusal(node, remote: remote) {
            return Refusal(reason: .address, message: message)
        }
        guard let port, port > 0, port < 1024 else {
            return Refusal(reason: .port, message: "unprivileged source port \(port.map(String.init) ?? "?"): only root on the node may ask (a port below 1024)")
        }
        guard let state, let opened = state.secretWindowOpened else {
            return Refusal(reason: .window, message: "outside the boot window: \(node.hostname) has not booted since the server started watching")
        }
        let age = now.timeIntervalSince(opened)
        guard age >= -5, age <= window else {
            return Refusal(reason: .window, message: "outside the boot window: its last DHCP acknowledgement was \(Int(age)) s ago, the window is \(Int(window)) s")
        }
        guard delivered < perBoot else {
            return Refusal(reason: .fetched, message: "already fetched this boot (boot \(state.boot)); a new boot opens a new window")
        }
        let wanted = node.smbios
        if let uuid = wanted.productUUID, smbios.uuid?.lowercased() != uuid {
            return Refusal(reason: .smbios, message: "SMBIOS mismatch: the product UUID is not the inventory's")
        }
        if let serial = wanted.productSerial, smbios.serial != serial {
            return Refusal(reason: .smbios, message: "SMBIOS mismatch: the product serial is not the inventory's")
        }
        if let tag = wanted.assetTag, smbios.assetTag != tag {
            return Refusal(reason: .smbios, message: "SMBIOS mismatch: the asset tag is not the inventory's")
        }
        return nil
    }
}

/// A node's own data (its secrets, its cloud-init data) goes only to an address the server ties to the
/// node's MAC: its fixed address in the inventory, or the one it holds a live lease on from this server.
/// The MAC in a node's own path (`/boot/v1/secrets/<mac>`, `/cloud-init/<mac>/...`): only the
/// hyphenated spelling the boot plan writes, so no other form and no path trick reaches a lookup.
func nodePathMAC(_ text: String) -> MACAddress? {
    guard text.utf8.count == 17, let mac = MACAddress(text), mac.hyphenated == text.lowercased() else { return nil }
    return mac
}

/// What a client sent, as it may appear in a log line or an answer: printable ASCII, at most 40.
func printableClientText(_ text: String) -> String {
    var printable = String.UnicodeScalarView()
    printable.append(contentsOf: text.unicodeScalars.lazy.filter { $0.value >= 0x20 && $0.value < 0x7f }.prefix(40))
    return String(printable)
}

struct NodeAddressRule: Sendable {
    var addressesOf: @Sendable (MACAddress) -> [IPv4Address]

    /// nil when `remote` is one of `node`'s addresses, else the refusal's text.
    func refusal(_ node: Inventory.Node, remote: IPv4Address?) -> String? {
        let expected = addressesOf(node.mac)
        if let remote, expected.contains(remote) { return nil }
        let known = expected.isEmpty ? "it has no fixed address and no live lease" : "its address is \(expected.map(\.description).joined(separator: " or "))"
        return "not from the node's address: \(remote.map(\.description) ?? "?") asked for \(node.hostname) (\(known))"
    }
}

/// How many times each MAC's current boot got its secrets. In memory: a server restart in the middle
/// of a boot lets that boot fetch once more, which the window still bounds.
final class SecretLedger: Sendable {
    private let deliveries = Mutex<[MACAddress: (boot: Int, count: Int)]>([:])

    func count(_ mac: MACAddress, boot: Int) -> Int {
        deliveries.withLock { table in table[mac].map { $0.boot == boot ? $0.count : 0 } ?? 0 }
    }

    /// Counts one delivery, unless another request of the same boot took the last one meanwhile.
    func take(_ mac: MACAddress, boot: Int, limit: Int) -> Bool {
        deliveries.withLock { table in
            let count = table[mac].map { $0.boot == boot ? $0.count : 0 } ?? 0
            guard count < limit else { return false }
            table[mac] = (boot, count + 1)
            return true
        }
    }
}
