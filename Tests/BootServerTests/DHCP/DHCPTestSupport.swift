import BootProtocols
import BootServer
import Foundation
import ImageBuildKit
import Logging

/// A temporary directory, removed by `cleanup()`.
struct DHCPTemporaryDirectory {
    let path: String

    init(_ prefix: String = "dhcp-test") throws {
        path = NSTemporaryDirectory() + prefix + "-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    func write(_ name: String, _ text: String) throws {
        try text.write(toFile: path + "/" + name, atomically: true, encoding: .utf8)
    }

    func cleanup() { try? FileManager.default.removeItem(atPath: path) }
}

func dhcpTestLogger(_ label: String) -> Logger { testLogger(label) }

func dhcpMAC(_ n: Int) -> MACAddress { MACAddress(rawValue: 0x5254_0077_0000 | UInt64(n)) }

func dhcpTime(_ seconds: Int64) -> DHCPTimestamp { DHCPTimestamp(secondsSinceEpoch: seconds) }

/// Thread-safe collection for completions and observer events.
final class DHCPBox<Element: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [Element] = []

    func append(_ item: Element) {
        lock.lock()
        items.append(item)
        lock.unlock()
    }

    var all: [Element] {
        lock.lock()
        defer { lock.unlock() }
        return items
    }
}

/// A semaphore-like gate a journal sync can wait on (for holding a batch open).
final class DHCPGate: @unchecked Sendable {
    private let condition = NSCondition()
    private var open = false
    private(set) var waiting = 0

    func wait() {
        condition.lock()
        waiting += 1
        condition.broadcast()
        while !open { condition.wait() }
        condition.unlock()
    }

    func release() {
        condition.lock()
        open = true
        condition.broadcast()
        condition.unlock()
    }

    /// Blocks until someone waits (bounded).
    func waitForWaiter(timeout: TimeInterval = 5) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        let end = Date().addingTimeInterval(timeout)
        while waiting == 0 { if !condition.wait(until: end) { return false } }
        return true
    }
}

/// nodes.yaml text for tests.
func dhcpInventoryYAML(server: String = "10.77.0.1", subnet: String = "10.77.0.0/24", pool: String? = "10.77.0.100-10.77.0.199",
                       leaseTime: Int = 600, httpPort: Int = 8080, biosLoader: String = "lpxelinux.0",
                       nodes: [(mac: String, name: String, ip: String?)] = []) -> String {
    var text = """
    network:
      server: \(server)
      subnet: \(subnet)
      router: \(server)
      dns: [\(server)]
      domain: cluster.test
      lease_time: \(leaseTime)
      http_port: \(httpPort)
      bios_loader: \(biosLoader)

    """
    if let pool { text += "  pool: \(pool)\n" }
    text += "defaults:\n  image: compute\n"
    if !nodes.isEmpty {
        text += "nodes:\n"
        for node in nodes {
            text += "  - mac: \(node.mac)\n    hostname: \(node.name)\n"
            if let ip = node.ip { text += "    ip: \(ip)\n" }
        }
    }
    return text
}
