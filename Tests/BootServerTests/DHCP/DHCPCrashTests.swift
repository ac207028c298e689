import BootProtocols
import BootServer
import Foundation
import ImageBuildKit
import Logging
import ServiceLifecycle
import TestSupport
import Testing

/// Environment of the server child process (this test binary re-run with a filter on
/// `dhcpServerChildProcess`): the crash test needs a server it can kill -9, and the benchmark script
/// uses the same entry point until `imagebuild serve` exists.
enum DHCPChildEnvironment {
    static let flag = "IMAGEBUILD_DHCPD_CHILD"
    static let nodes = "IMAGEBUILD_DHCPD_NODES"
    static let state = "IMAGEBUILD_DHCPD_STATE"
    static let interface = "IMAGEBUILD_DHCPD_INTERFACE"
    static let ready = "IMAGEBUILD_DHCPD_READY"
    static let seconds = "IMAGEBUILD_DHCPD_SECONDS"
}

@Suite("DHCP server crash safety", .serialized)
struct DHCPCrashTests {
    /// Not a test on its own: the server process the crash test starts (and kills). Skipped unless the
    /// environment names a child run. Serves until killed or IMAGEBUILD_DHCPD_SECONDS (default 120) pass.
    @Test(.enabled(if: ProcessInfo.processInfo.environment[DHCPChildEnvironment.flag] != nil))
    func dhcpServerChildProcess() async throws {
        let env = ProcessInfo.processInfo.environment
        var logger = Logger(label: "dhcpd-child")
        logger.logLevel = env["DHCP_TEST_LOG"] != nil ? .debug : .warning
        let inventory = try InventoryStore(path: env[DHCPChildEnvironment.nodes]!, logger: logger)
        var configuration = DHCPServerConfiguration(stateDirectory: env[DHCPChildEnvironment.state]!)
        configuration.interfaces = env[DHCPChildEnvironment.interface].map { [$0] } ?? []
        configuration.rateLimitBurst = 0  // load generators reuse MACs on purpose
        let server = DHCPServer(configuration: configuration, inventory: inventory, logger: logger)
        try await serving(server) { _ in
            if let ready = env[DHCPChildEnvironment.ready] { _ = FileManager.default.createFile(atPath: ready, contents: Data("\(getpid())".utf8)) }
            let seconds = Int(env[DHCPChildEnvironment.seconds] ?? "") ?? 120
            try? await Task.sleep(for: .seconds(seconds))
        }
    }

    /// The running test binary and the arguments that select one test in it.
    static func childCommand() -> [String] {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return [exe, "--testing-library", "swift-testing", "--filter", "dhcpServerChildProcess"]
    }

    @Test("kill -9 under load, restart: every ACKed client keeps its address, the journal never gave one address twice",
          .enabled(if: DHCPLab.crashUnavailable == nil, "needs network namespaces: \(DHCPLab.crashUnavailable ?? "")"))
    func killUnderLoad() async throws {
        try await DHCPLab.with { network in

        let octet = dhcpTestSubnetOctet()
        let serverNS = try await network.addNamespace("s")
        let clientNS = try await network.addNamespace("c")
        try await network.addVeth(serverNS, "srv0", clientNS, "cl0")
        try await network.run(["ip", "-n", serverNS, "addr", "add", "10.\(octet).0.1/16", "dev", "srv0"])
        let dir = network.directory
        let client = DHCPLab.clientScript(in: network)
        try dhcpInventoryYAML(server: "10.\(octet).0.1", subnet: "10.\(octet).0.0/16", pool: "10.\(octet).1.0-10.\(octet).60.255",
                              leaseTime: 3600).write(toFile: dir + "/nodes.yaml", atomically: true, encoding: .utf8)

        func startServer(_ round: Int) async throws -> BackgroundProcess {
            let ready = dir + "/ready-\(round)"
            let server = try network.start("server-\(round)", Self.childCommand(), in: serverNS,
                environment: [DHCPChildEnvironment.flag: "1", DHCPChildEnvironment.nodes: dir + "/nodes.yaml",
                              DHCPChildEnvironment.state: dir + "/state", DHCPChildEnvironment.interface: "srv0",
                              DHCPChildEnvironment.ready: ready, DHCPChildEnvironment.seconds: "90"])
            let clock = ContinuousClock()
            let start = clock.now
            while !FileManager.default.fileExists(atPath: ready) && clock.now - start < .seconds(30) && server.isRunning {
                try await Task.sleep(for: .milliseconds(50))
            }
            guard FileManager.default.fileExists(atPath: ready) else {
                throw DHCPTestFailure("server child did not start: \(server.log)")
            }
            return server
        }

        let first = try await startServer(1)
        // A bounded load loop (at most 20000 clients, 6 s) with the server killed 2 s in.
        let load = Task {
            try await network.exec(clientNS, ["python3", client, "load", "cl0", "20000", "6", "020000000000"], timeout: 30)
        }
        try await Task.sleep(for: .seconds(2))
        first.kill()
        let output = try await load.value.stdout
        let acked: [(mac: String, ip: String)] = output.split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ")
            return f.count == 3 && f[0] == "ACK" ? (String(f[1]), String(f[2])) : nil
        }
        #expect(acked.count > 20, "the load loop got ACKs before the kill: \(output.prefix(300))")
        #expect(output.contains("NOOFFER"), "the kill happened while clients were still asking")

        // Every ACK that left was durable: it is in the journal, and the journal's history is clean.
        let journal = try LeaseJournalContents.read(path: dir + "/state/dhcp-leases.journal")
        let committed = Dictionary(journal.records.filter { $0.kind == .commit }.map { ($0.mac.description, $0.address.description) },
                                   uniquingKeysWith: { _, last in last })
        for (mac, ip) in acked { #expect(committed[mac] == ip, "ACK of \(ip) to \(mac) not in the journal") }
        #expect(leaseJournalViolation(journal.records) == nil)

        // Restart: every client that got an ACK is offered the same address again.
        let second = try await startServer(2)
        let sample = acked.count > 200 ? Array(acked.suffix(200)) : acked  // the last ones are the ones a torn batch would lose
        let check = try await network.exec(clientNS, ["python3", client, "check", "cl0"] + sample.map(\.mac), timeout: 120)
        let offered = Dictionary(check.stdout.split(separator: "\n").compactMap { line -> (String, String)? in
            let f = line.split(separator: " ")
            return f.count == 3 && f[0] == "OFFER" ? (String(f[1]), String(f[2])) : nil
        }, uniquingKeysWith: { a, _ in a })
        for (mac, ip) in sample { #expect(offered[mac] == ip, "after restart \(mac) was offered \(offered[mac] ?? "nothing"), had \(ip)") }
        second.kill()
        let after = try LeaseJournalContents.read(path: dir + "/state/dhcp-leases.journal")
        #expect(leaseJournalViolation(after.records) == nil)
        }
    }
}
