import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The one network lab of the test suite: network namespaces, bridges, veth pairs and taps that a
/// test creates, and the processes it starts in them. Nothing touches a real interface: the only link
/// on the host side is a veth end the lab created. `close()` (or release) stops every process started
/// here by its PID, deletes the host-side links and every namespace, whatever happened.
///
/// Names: namespaces and host links are `ib<id><suffix>` with a random 6-character id, so concurrent
/// runs do not collide; keep suffixes short (an interface name has at most 15 characters).
///
/// Every method that runs commands has an async twin that does not hold a cooperative thread.
public final class NamespaceLab: @unchecked Sendable {
    public let id: String
    /// Files of the lab (process logs, configuration). Removed by `close()` unless the lab was made
    /// with `keepDirectory`, which leaves it for reading after a failure (the newest 8 are kept).
    public let directory: String
    private let keepDirectory: Bool
    private let lock = NSLock()
    private var namespaces: [String] = []
    private var hostLinks: [String] = []
    private var processes: [BackgroundProcess] = []
    private var taps = 0
    private var closed = false

    /// Why namespaces cannot be made here (not root, or `ip netns add` refused), nil when they can.
    /// Computed once, by creating and deleting one namespace.
    public static let unavailableReason: String? = {
        guard geteuid() == 0 else { return "not root: network namespaces need CAP_NET_ADMIN" }
        guard ProcessRunner.which("ip") != nil else { return "iproute2 (ip) is not installed" }
        let probe = "ibprobe\(getpid())"
        guard let result = try? ProcessRunner.run("ip", ["netns", "add", probe], timeout: 20), result.status == 0 else {
            return "'ip netns add' is not permitted here"
        }
        _ = try? ProcessRunner.run("ip", ["netns", "del", probe], timeout: 20)
        return nil
    }()

    /// `unavailableReason`, or which of `tools` are missing; nil when the lab and every tool are there.
    public static func unavailableReason(needing tools: [String]) -> String? {
        unavailableReason ?? ProcessRunner.missing(tools)
    }

    /// - Parameters:
    ///   - name: names the directory (`<tmp>/ib-<name>.XXXXXX`).
    ///   - keepDirectory: leave the directory after `close()` (and prune all but the newest 8 of this name).
    public init(name: String = "netlab", keepDirectory: Bool = false) throws {
        id = String(UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(6)).lowercased()
        self.keepDirectory = keepDirectory
        if keepDirectory { Self.pruneOldDirectories(name, keeping: 8) }
        var bytes = Array((NSTemporaryDirectory() + "ib-\(name).XXXXXX").utf8CString)
        guard let made = bytes.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw ProcessError("mkdtemp: errno \(errno)")
        }
        directory = String(cString: made)
    }

    deinit { close() }

    // MARK: Commands

    /// Runs a command on the host; throws when it fails.
    @discardableResult
    public func run(_ arguments: [String], timeout: Double = 30) throws -> ProcessResult {
        try Self.checked(arguments, ProcessRunner.run(arguments[0], Array(arguments.dropFirst()), timeout: timeout))
    }

    @discardableResult
    public func run(_ arguments: [String], timeout: Double = 30) async throws -> ProcessResult {
        try Self.checked(arguments, await ProcessRunner.run(arguments[0], Array(arguments.dropFirst()), timeout: timeout))
    }

    /// Runs a command inside `namespace` (`ip netns exec`); the status is the caller's to check.
    public func exec(_ namespace: String, _ arguments: [String], timeout: Double = 30) throws -> ProcessResult {
        try ProcessRunner.run("ip", Self.inNamespace(namespace, arguments), timeout: timeout)
    }

    public func exec(_ namespace: String, _ arguments: [String], timeout: Double = 30) async throws -> ProcessResult {
        try await ProcessRunner.run("ip", Self.inNamespace(namespace, arguments), timeout: timeout)
    }

    /// `ip netns exec` arguments, the program by its full path (`ip` looks it up in a PATH that may
    /// lack /usr/sbin).
    static func inNamespace(_ namespace: String, _ arguments: [String]) -> [String] {
        ["netns", "exec", namespace, ProcessRunner.which(arguments[0]) ?? arguments[0]] + arguments.dropFirst()
    }

    /// `exec`, throwing when the command fails.
    @discardableResult
    public func execChecked(_ namespace: String, _ arguments: [String], timeout: Double = 30) throws -> ProcessResult {
        let result = try exec(namespace, arguments, timeout: timeout)
        guard result.status == 0 else { throw Self.failure(["ip"] + Self.inNamespace(namespace, arguments), result) }
        return result
    }

    private static func checked(_ arguments: [String], _ result: ProcessResult) throws -> ProcessResult {
        guard result.status == 0 else { throw failure(arguments, result) }
        return result
    }

    private static func failure(_ arguments: [String], _ result: ProcessResult) -> ProcessError {
        ProcessError("\(arguments.joined(separator: " ")) failed (\(result.timedOut ? "timed out" : "status \(result.status)")): \(result.output)")
    }

    // MARK: Topology

    /// A new namespace `ib<id><suffix>` with its loopback up.
    @discardableResult
    public func addNamespace(_ suffix: String) throws -> String {
        let name = "ib\(id)\(suffix)"
        try run(["ip", "netns", "add", name])
        lock.withLock { namespaces.append(name) }
        try run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name
    }

    /// A bridge in `namespace` (no STP, no forwarding delay), up, with `address` (CIDR) if given.
    public func addBridge(_ name: String, in namespace: String, address: String? = nil) throws {
        try run(["ip", "-n", namespace, "link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0"])
        if let address { try run(["ip", "-n", namespace, "addr", "add", address, "dev", name]) }
        try run(["ip", "-n", namespace, "link", "set", name, "up"])
    }

    /// A veth pair whose first end (`ib<id><suffix>`, returned) stays on the host with `hostAddress`
    /// and whose second, `peerName`, goes to `namespace`. Both up.
    public func addHostVeth(_ suffix: String, to namespace: String, peerName: String, hostAddress: String) throws -> String {
        let host = "ib\(id)\(suffix)"
        try run(["ip", "link", "add", host, "type", "veth", "peer", "name", peerName, "netns", namespace])
        lock.withLock { hostLinks.append(host) }
        try run(["ip", "addr", "add", hostAddress, "dev", host])
        try run(["ip", "link", "set", host, "up"])
        try run(["ip", "-n", namespace, "link", "set", peerName, "up"])
        return host
    }

    /// A veth pair between two namespaces (`aName` in `a`, `bName` in `b`), both ends up.
    public func addVeth(_ a: String, _ aName: String, _ b: String, _ bName: String) throws {
        try run(["ip", "-n", a, "link", "add", aName, "type", "veth", "peer", "name", bName, "netns", b])
        try run(["ip", "-n", a, "link", "set", aName, "up"])
        try run(["ip", "-n", b, "link", "set", bName, "up"])
    }

    /// A new tap device (`tapN`) in `namespace`, up and enslaved to `bridge`: one per VM.
    public func addTap(in namespace: String, bridge: String) throws -> String {
        let name = lock.withLock { taps += 1; return "tap\(taps)" }
        try execChecked(namespace, ["ip", "tuntap", "add", "dev", name, "mode", "tap"])
        try execChecked(namespace, ["ip", "link", "set", name, "master", bridge, "up"])
        return name
    }

    public func setMAC(_ namespace: String, _ link: String, _ mac: String) throws {
        try run(["ip", "-n", namespace, "link", "set", "dev", link, "address", mac])
    }

    /// Loads an nftables ruleset into `namespace` (e.g. rules that drop a share of the frames).
    public func loadRules(_ ruleset: String, in namespace: String) throws {
        let file = directory + "/rules-\(UUID().uuidString.prefix(8)).nft"
        try ruleset.write(toFile: file, atomically: true, encoding: .utf8)
        try execChecked(namespace, ["nft", "-f", file])
    }

    /// The sum of the `counter` packets of an nftables table in `namespace` (`family` e.g. `bridge`, `inet`).
    public func countedPackets(family: String, table: String, in namespace: String) throws -> Int {
        let listing = try execChecked(namespace, ["nft", "list", "table", family, table]).stdout
        return listing.split(separator: "\n").compactMap { line -> Int? in
            guard let range = line.range(of: #"packets [0-9]+"#, options: .regularExpression) else { return nil }
            return Int(line[range].dropFirst("packets ".count))
        }.reduce(0, +)
    }

    // MARK: Processes

    /// Starts a program inside `namespace` (on the host when nil), its output in `directory/<name>.log`.
    /// It is stopped by its PID in `close()`.
    @discardableResult
    public func start(_ name: String, _ arguments: [String], in namespace: String?, environment: [String: String] = [:]) throws -> BackgroundProcess {
        let command = namespace.map { ["ip"] + Self.inNamespace($0, arguments) } ?? arguments
        let process = try BackgroundProcess(command[0], Array(command.dropFirst()), log: directory + "/\(name).log", environment: environment)
        lock.withLock { processes.append(process) }
        return process
    }

    // MARK: Clean-up

    /// Stops every process started here (newest first), deletes the host links and the namespaces.
    public func close() {
        let (processes, links, namespaces) = lock.withLock { () -> ([BackgroundProcess], [String], [String]) in
            if closed { return ([], [], []) }
            closed = true
            return (self.processes, hostLinks, self.namespaces)
        }
        for process in processes.reversed() { process.stop() }
        for link in links { _ = try? ProcessRunner.run("ip", ["link", "del", link], timeout: 20) }
        for namespace in namespaces { _ = try? ProcessRunner.run("ip", ["netns", "del", namespace], timeout: 20) }
        if !keepDirectory { try? FileManager.default.removeItem(atPath: directory) }
    }

    /// Runs `body` with a fresh lab and always closes it.
    public static func with<T>(name: String = "netlab", _ body: (NamespaceLab) async throws -> T) async throws -> T {
        let lab = try NamespaceLab(name: name)
        do {
            let result = try await body(lab)
            await lab.close()
            return result
        } catch {
            await lab.close()
            throw error
        }
    }

    /// A lab's directory outlives it when kept: it is what a failure is read from, then or later. Only
    /// the newest `keeping` of one name stay, so repeated runs do not fill /tmp.
    static func pruneOldDirectories(_ name: String, keeping: Int) {
        let temporary = NSTemporaryDirectory()
        let manager = FileManager.default
        guard let names = try? manager.contentsOfDirectory(atPath: temporary) else { return }
        let labs = names.filter { $0.hasPrefix("ib-\(name).") }.map { temporary + $0 }.compactMap { path -> (String, Date)? in
            guard let modified = (try? manager.attributesOfItem(atPath: path))?[.modificationDate] as? Date else { return nil }
            return (path, modified)
        }
        for (path, _) in labs.sorted(by: { $0.1 > $1.1 }).dropFirst(keeping - 1) { try? manager.removeItem(atPath: path) }
    }
}

// Async twins of the topology methods: each runs the blocking one on a thread of its own.
extension NamespaceLab {
    @discardableResult
    public func addNamespace(_ suffix: String) async throws -> String {
        try await ProcessRunner.onOwnThread { try self.addNamespace(suffix) }
    }

    public func addBridge(_ name: String, in namespace: String, address: String? = nil) async throws {
        try await ProcessRunner.onOwnThread { try self.addBridge(name, in: namespace, address: address) }
    }

    public func addHostVeth(_ suffix: String, to namespace: String, peerName: String, hostAddress: String) async throws -> String {
        try await ProcessRunner.onOwnThread { try self.addHostVeth(suffix, to: namespace, peerName: peerName, hostAddress: hostAddress) }
    }

    public func addVeth(_ a: String, _ aName: String, _ b: String, _ bName: String) async throws {
        try await ProcessRunner.onOwnThread { try self.addVeth(a, aName, b, bName) }
    }

    public func setMAC(_ namespace: String, _ link: String, _ mac: String) async throws {
        try await ProcessRunner.onOwnThread { try self.setMAC(namespace, link, mac) }
    }

    public func close() async {
        _ = try? await ProcessRunner.onOwnThread { self.close() }
    }
}
