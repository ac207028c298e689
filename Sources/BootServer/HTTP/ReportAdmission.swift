import BootProtocols
import Crypto
import Foundation
import ImageBuildKit

/// Who may report a node's stages (`POST /api/v1/events`). Pure: the lookups come in as functions.
///
/// Anyone on the boot network can send a report, so a report for a MAC is believed only when it
/// comes from an address the server itself ties to that MAC:
/// - the node's fixed address in nodes.yaml (`ip:`), or
/// - the address that MAC holds a live lease on from this server's DHCP,
/// or when it carries a valid per-boot token for that MAC (`ReportTokens`: for sites where reports
/// arrive through NAT or a relay, so the source address says nothing). Nothing a client can say over
/// HTTP (a boot-script request, a download) teaches this rule an address.
struct ReportAdmission: Sendable {
    /// The MAC the inventory gives a fixed address to, or that holds a live lease on it.
    var macAt: @Sendable (IPv4Address) -> MACAddress?
    /// The addresses the server ties to a MAC (fixed address, live lease).
    var addressesOf: @Sendable (MACAddress) -> [IPv4Address]
    /// Checks a per-boot token; nil when tokens are off.
    var verifyToken: (@Sendable (String, MACAddress) -> Bool)?

    enum Decision: Equatable {
        case accept(MACAddress)
        /// 400: the report itself is wrong.
        case malformed(String)
        /// 403: well formed, but this sender may not report for this MAC.
        case refused(String)
    }

    func decide(mac text: String?, token: String?, from remote: IPv4Address?) -> Decision {
        guard let text else {
            // No MAC: the sender's own address must name the node.
            guard let remote, let mac = macAt(remote) else {
                return .malformed("missing \"mac\", and the sender's address \(remote.map { "\($0)" } ?? "?") is neither a node's fixed address nor a live lease")
            }
            return .accept(mac)
        }
        guard let mac = MACAddress(text) else {
            return .malformed("'\(text.prefix(40))' is not a MAC address (aa:bb:cc:dd:ee:ff)")
        }
        // The common case answers without building the list of the MAC's addresses.
        if let remote, macAt(remote) == mac { return .accept(mac) }
        let expected = addressesOf(mac)
        if let remote, expected.contains(remote) { return .accept(mac) }
        if let token, !token.isEmpty, let verifyToken {
            return verifyToken(token, mac) ? .accept(mac) : .refused("the token is not valid for \(mac) (expired, or from another boot)")
        }
        let known = expected.isEmpty
            ? "it has no fixed address in nodes.yaml and no live lease"
            : "its address is \(expected.map { "\($0)" }.joined(separator: " or "))"
        return .refused("a report for \(mac) must come from the node itself; \(remote.map { "\($0)" } ?? "this sender") is not it (\(known))")
    }
}

/// Per-boot report tokens: `GET /boot/v1/bootscript` puts one on the kernel command line
/// (`imagebuild.token=…`), and stage 1 and stage 2 send it with each report.
///
/// A token is `<issued>.<mac-bound HMAC-SHA256, 128 bits, hex>` under a key kept in the state directory
/// (mode 0600), so tokens survive a server restart and need no table. It proves that the sender got the
/// boot script for that MAC within `lifetime`: whoever can fetch that boot script can report for the
/// node, which is why tokens are off unless `http.report_tokens` turns them on for NAT'd or relayed
/// sites.
public struct ReportTokens: Sendable {
    /// The key's bytes (Crypto's `SymmetricKey` is not `Sendable`).
    private let key: [UInt8]
    var lifetime: TimeInterval = 6 * 3600

    init(key: [UInt8], lifetime: TimeInterval = 6 * 3600) {
        self.key = key
        self.lifetime = lifetime
    }

    /// Loads the key from `path`, or creates it (32 random bytes, mode 0600) when missing.
    public init(keyFile path: String) throws {
        if let data = FileManager.default.contents(atPath: path) {
            var info = stat()
            if stat(path, &info) == 0, info.st_mode & 0o077 != 0 {
                throw StartupError("\(path): the report-token key must not be readable by others (chmod 600 \(path))")
            }
            guard data.count >= 32 else { throw StartupError("\(path): the report-token key is shorter than 32 bytes; delete it to make a new one") }
            key = Array(data)
            return
        }
        let created = SymmetricKey(size: .bits256)
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw StartupError("cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let written = created.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard written == 32, fsync(fd) == 0 else { throw StartupError("cannot write \(path): \(String(cString: strerror(errno)))") }
        key = created.withUnsafeBytes { Array($0) }
    }

    func issue(for mac: MACAddress, at now: Date) -> String {
        let issued = Int64(now.timeIntervalSince1970)
        return "\(issued).\(signature(mac, issued))"
    }

    func verify(_ token: String, for mac: MACAddress, at now: Date) -> Bool {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 2, let issued = Int64(parts[0]) else { return false }
        let age = now.timeIntervalSince1970 - Double(issued)
        guard age >= -60, age <= lifetime else { return false }
        // Compared in constant time: the expected signature is secret until sent.
        let expected = Array(signature(mac, issued).utf8), given = Array(parts[1].utf8)
        guard expected.count == given.count else { return false }
        return zip(expected, given).reduce(0) { $0 | ($1.0 ^ $1.1) } == 0
    }

    private func signature(_ mac: MACAddress, _ issued: Int64) -> String {
        let message = Array("imagebuild-report-token\0\(mac)\0\(issued)".utf8)
        let code = HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: key))
        return code.prefix(16).map { String(format: "%02x", $0) }.joined()
    }
}
