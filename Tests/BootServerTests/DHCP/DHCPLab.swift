import Foundation
import TestSupport

/// What the DHCP namespace tests need beyond the shared `NamespaceLab`: their conditions (computed
/// once, for `.enabled(if:)`), the scripted client written into the lab, a random subnet.
enum DHCPLab {
    /// Why the tests with udhcpc and dhclient cannot run here, nil when they can.
    static let clientsUnavailable = NamespaceLab.unavailableReason(needing: ["python3", "udhcpc", "dhclient"])
    /// Why the proxyDHCP test (next to dnsmasq) cannot run here, nil when it can.
    static let proxyUnavailable = NamespaceLab.unavailableReason(needing: ["python3", "dnsmasq"])
    /// Why the crash test (the scripted client against a server child) cannot run here, nil when it can.
    static let crashUnavailable = NamespaceLab.unavailableReason(needing: ["python3"])

    /// Runs `body` with a fresh lab holding `dhcp_client.py` (`clientScript(in:)`), and always closes it.
    static func with<T>(_ body: (NamespaceLab) async throws -> T) async throws -> T {
        try await NamespaceLab.with(name: "dhcp-net") { lab in
            try dhcpClientScript.write(toFile: clientScript(in: lab), atomically: true, encoding: .utf8)
            return try await body(lab)
        }
    }

    /// The scripted DHCP client (DHCPClientScript.swift) in `lab`'s directory.
    static func clientScript(in lab: NamespaceLab) -> String { lab.directory + "/dhcp_client.py" }
}

/// A random /24 in 10.213.0.0/16 so concurrent runs do not collide.
func dhcpTestSubnetOctet() -> Int { Int.random(in: 20...250) }
