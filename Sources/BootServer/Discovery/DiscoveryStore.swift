import BootProtocols
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import ImageBuildKit
import Logging

/// One machine nodes.yaml does not list, as DHCP saw it (`imagebuild nodes discovered`,
/// `GET /api/v1/discovered`). Text fields are what the client (or its relay) sent, made printable.
public struct DiscoveredMachine: Sendable, Equatable, Codable {
    public var mac: String
    /// Unix seconds of the first and the latest request.
    public var firstSeen: Int64
    public var lastSeen: Int64
    public var requests: Int
    /// The latest request's DHCP message type.
    public var lastMessage: String?
    /// Option 93, e.g. `x64 UEFI (7)`.
    public var architecture: String?
    /// Option 60, e.g. `PXEClient:Arch:00007:UNDI:003016`.
    public var vendorClass: String?
    /// Option 77 (`iPXE` for an iPXE ROM).
    public var userClass: String?
    /// Option 12, the host name the client asked for.
    public var requestedHostname: String?
    /// giaddr, when the request came through a relay.
    public var relay: String?
    /// Option 82's circuit id and remote id (sub-options 1 and 2), when a relay added them.
    public var circuitID: String?
    public var remoteID: String?
    /// The interface the request came in on.
    public var interface: String?
    /// The hostname the machine is bound to since, when it is (by `discover:` or `nodes adopt`).
    public var boundAs: String?

    enum CodingKeys: String, CodingKey {
        case mac, requests, architecture, relay, interface
        case firstSeen = "first_seen", lastSeen = "last_seen", lastMessage = "last_message", vendorClass = "vendor_class"
        case userClass = "user_class", requestedHostname = "requested_hostname", circuitID = "circuit_id", remoteID = "remote_id"
        case boundAs = "bound_as"
    }

    /// What one request tells about the machine.
    public init(mac: MACAddress, message: DHCPMessage, interface: String?, at now: Int64) {
        self.mac = mac.description
        firstSeen = now
        lastSeen = now
        requests = 1
        update(message: message, interface: interface, at: now)
    }

    /// Takes the latest request's values (a value the request lacks keeps the earlier one).
    mutating func update(message: DHCPMessage, interface: String?, at now: Int64) {
        lastSeen = max(lastSeen, now)
        let options = message.options
        lastMessage = options.messageType?.description ?? lastMessage
        if let arch = options.clientArchitecture { architecture = "\(arch)" }
        if let text = options.vendorClassIdentifier.map(Self.text) { vendorClass = text }
        if let text = options.userClass.map(Self.text) { userClass = text }
        if let text = options.hostName.map({ Self.text(Array($0.utf8)[...]) }) { requestedHostname = text }
        if !message.giaddr.isAny { relay = message.giaddr.description }
        if let agent = options.relayAgentInformation {
            if let id = agent.circuitID { circuitID = DHCPRelayAgentInformation.printable(id) }
            if let id = agent.remoteID { remoteID = DHCPRelayAgentInformation.printable(id) }
        }
        if let interface { self.interface = interface }
    }

    /// Printable ASCII, at most 64 bytes; anything else as hex.
    static func text(_ bytes: ArraySlice<UInt8>) -> String {
        DHCPRelayAgentInformation.printable(Array(bytes.prefix(64)))
    }
}

/// What the server knows of machines nodes.yaml does not list, and the bindings it makes for them.
///
/// **Durability.** A machine's first sighting and every binding are on disk before the server
/// answers that machine (the DHCP engine holds the packet until `whenDurable` completes, as it holds
/// an ACK for the lease journal): one writer thread takes everything queued, writes it once and
/// fsyncs once (group commit), so a storm of unknown machines costs one fsync per batch, not one per
/// packet. Later sightings only update memory; the writer saves them at most every `flushInterval`
/// (a crash loses at most that much of `last_seen` and the request counts).
///
/// Files, in `STATE_DIR/discovery/`: `discovered.json` (the sightings, rewritten aside, fsynced,
/// renamed) and `bindings` (`NodeBindingJournal`, append-only, shared with `nodes adopt`).
///
/// Thread safety: one lock around the in-memory state; the DHCP event loop calls `observe` and
/// `bind`, which never touch the disk.
public final class DiscoveryStore: @unchecked Sendable {
    public typealias Completion = @Sendable (Result<Void, DiscoveryStoreError>) -> Void

    public let directory: String
    public var machinesPath: String { directory + "/discovered.json" }
    public var bindingsPath: String { directory + "/bindings" }
    /// At most this many machines are remembered (a flood of random MACs costs bounded memory and
    /// disk): the one seen longest ago makes room.
    public let maximumMachines: Int
    public let flushInterval: Duration
    /// Called on the writer thread after new bindings are durable, before the waiting packets are
    /// answered: `serve` re-reads the bindings into the live inventory here.
    private let onBindings: @Sendable () -> Void
    private let logger: Logger

    private let condition = NSCondition()
    private var machines: [MACAddress: DiscoveredMachine] = [:]
    private var dirty = false
    private var durableRequested = false
    private var completions: [Completion] = []
    private var pending: [NodeBinding] = []
    /// Bindings this process made (durable or queued): their slots are taken even before the live
    /// inventory shows them, and a MAC is never bound twice.
    private var made: [MACAddress: NodeBinding] = [:]
    private var stopping = false
    private var stopped = false
    private var statistics = DiscoveryStatistics()

    public init(directory: String, maximumMachines: Int = 65_536, flushInterval: Duration = .seconds(2), logger: Logger,
                onBindings: @escaping @Sendable () -> Void = {}) throws {
        self.directory = directory
        self.maximumMachines = maximumMachines
        self.flushInterval = flushInterval
        self.logger = logger
        self.onBindings = onBindings
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for machine in try Self.readMachines(path: directory + "/discovered.json") {
            if let mac = MACAddress(machine.mac) { machines[mac] = machine }
        }
        let thread = Thread { [self] in writerLoop() }
        thread.name = "discovery-writer"
        thread.start()
    }

    /// The sightings file (`discovered.json`); a missing file reads as empty.
    public static func readMachines(path: String) throws -> [DiscoveredMachine] {
        guard FileManager.default.fileExists(atPath: path) else { return [] }
        guard let data = FileManager.default.contents(atPath: path) else { throw DiscoveryStoreError.io("read", path, errno) }
        do {
            return try JSONDecoder().decode(MachinesFile.self, from: data).machines
        } catch {
            throw DiscoveryStoreError.unreadable(path, "\(error)")
        }
    }

    struct MachinesFile: Codable {
        var version = 1
        var machines: [DiscoveredMachine]
    }

    // MARK: The DHCP event loop's side (memory only)

    /// Records a request from `mac`; true when it is the machine's first (the caller holds its answer
    /// until `whenDurable` says the sighting is on disk).
    public func observe(_ mac: MACAddress, _ message: DHCPMessage, interface: String?, at now: Int64) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        dirty = true
        if var machine = machines[mac] {
            machine.requests += 1
            machine.update(message: message, interface: interface, at: now)
            machines[mac] = machine
            return false
        }
        if machines.count >= maximumMachines, let oldest = machines.min(by: { $0.value.lastSeen < $1.value.lastSeen })?.key {
            machines[oldest] = nil
            statistics.forgotten += 1
        }
        machines[mac] = DiscoveredMachine(mac: mac, message: message, interface: interface, at: now)
        statistics.firstSightings += 1
        return true
    }

    /// Whether this process has a binding for `mac` that is not durable yet.
    public func isBinding(_ mac: MACAddress) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        return pending.contains { $0.mac == mac }
    }

    /// What `bind` decided.
    public enum BindOutcome: Sendable, Equatable {
        /// Bound (queued for the journal: answer after `whenDurable`).
        case bound(NodeBinding)
        /// This process bound the MAC before (the binding is queued, or the merge left it out).
        case alreadyBound(NodeBinding)
        /// No `discover:` block.
        case notConfigured
        /// Every slot is taken.
        case noFreeSlot(String)
    }

    /// Binds `mac` to the first free slot of `inventory`'s `discover:` block (the live inventory,
    /// bindings merged, plus the bindings this process made since).
    public func bind(_ mac: MACAddress, in inventory: Inventory, at now: Int64) -> BindOutcome {
        guard let discover = inventory.discover else { return .notConfigured }
        condition.lock()
        defer { condition.unlock() }
        if let earlier = made[mac] { return .alreadyBound(earlier) }
        guard let slot = inventory.nextDiscoverySlot(excluding: Array(made.values)) else {
            statistics.noFreeSlot += 1
            return .noFreeSlot(inventory.discoverySummary ?? "")
        }
        let binding = NodeBinding(mac: mac, hostname: slot.hostname, ip: slot.ip, group: discover.group, boundAt: now, origin: .discover)
        made[mac] = binding
        pending.append(binding)
        machines[mac]?.boundAs = slot.hostname
        dirty = true
        return .bound(binding)
    }

    /// Calls `completion` (on the writer thread) once everything recorded so far is on disk.
    public func whenDurable(_ completion: @escaping Completion) {
        condition.lock()
        if stopping {
            condition.unlock()
            completion(.failure(.closed))
            return
        }
        completions.append(completion)
        durableRequested = true
        condition.signal()
        condition.unlock()
    }

    // MARK: Readers

    /// The machines seen, most recent first.
    public func discovered() -> [DiscoveredMachine] {
        condition.lock()
        defer { condition.unlock() }
        return machines.values.sorted { ($0.lastSeen, $0.mac) > ($1.lastSeen, $1.mac) }
    }

    public var counters: DiscoveryStatistics {
        condition.lock()
        defer { condition.unlock() }
        return statistics
    }

    /// Writes what is queued and stops the writer. Blocks until it has.
    public func close() {
        condition.lock()
        if !stopping {
            stopping = true
            condition.signal()
        }
        while !stopped { condition.wait() }
        condition.unlock()
    }

    // MARK: The writer thread

    private func writerLoop() {
        var lastWrite = ContinuousClock.now
        while true {
            condition.lock()
            while !durableRequested && !stopping {
                let due = lastWrite + flushInterval
                if dirty {
                    if ContinuousClock.now >= due { break }
                    _ = condition.wait(until: Date().addingTimeInterval(Self.seconds(due - ContinuousClock.now)))
                } else {
                    condition.wait()
                }
            }
            let finish = stopping
            let bindings = pending
            let waiting = completions
            let snapshot = dirty ? Array(machines.values) : nil
            pending.removeAll()
            completions.removeAll()
            durableRequested = false
            dirty = false
            condition.unlock()

            var result: Result<Void, DiscoveryStoreError> = .success(())
            if !bindings.isEmpty {
                do {
                    try NodeBindingJournal.update(path: bindingsPath) { contents in
                        // A MAC adopted meanwhile by hand keeps that binding.
                        let taken = Set(contents.bindings.map(\.mac))
                        return bindings.filter { !taken.contains($0.mac) }
                    }
                    for binding in bindings {
                        logger.notice("bound \(binding.mac) as \(binding.hostname) \(binding.ip.map { "\($0)" } ?? "")", metadata: [
                            "mac": "\(binding.mac)", "hostname": "\(binding.hostname)", "file": "\(bindingsPath)",
                        ])
                    }
                    onBindings()
                } catch {
                    result = .failure(.bindings("\(error)"))
                    logger.error("bindings not written; the machines stay unbound", metadata: ["error": "\(error)"])
                    condition.lock()
                    for binding in bindings { made[binding.mac] = nil; machines[binding.mac]?.boundAs = nil }
                    statistics.failedWrites += 1
                    condition.unlock()
                }
            }
            if let snapshot {
                do {
                    try writeMachines(snapshot)
                } catch {
                    result = .failure(error)
                    logger.error("discovered machines not written", metadata: ["error": "\(error)"])
                    condition.lock()
                    statistics.failedWrites += 1
                    condition.unlock()
                }
                condition.lock()
                statistics.writes += 1
                condition.unlock()
            }
            lastWrite = ContinuousClock.now
            for completion in waiting { completion(result) }
            if finish { break }
        }
        condition.lock()
        stopped = true
        condition.broadcast()
        condition.unlock()
    }

    private static func seconds(_ duration: Duration) -> TimeInterval {
        let (s, atto) = duration.components
        return max(0.001, Double(s) + Double(atto) / 1e18)
    }

    /// Write aside, fsync, rename over, fsync the directory: the file is the old or the new list, whole.
    private func writeMachines(_ machines: [DiscoveredMachine]) throws(DiscoveryStoreError) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let sorted = machines.sorted { $0.mac < $1.mac }
        let data: Data
        do { data = try encoder.encode(MachinesFile(machines: sorted)) } catch { throw .unreadable(machinesPath, "\(error)") }
        let temporary = machinesPath + ".new"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640)
        guard fd >= 0 else { throw .io("open", temporary, errno) }
        let ok = data.withUnsafeBytes { raw -> Bool in
            var offset = 0
            while offset < raw.count {
                let n = write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 { if errno == EINTR { continue }; return false }
                offset += n
            }
            return fsync(fd) == 0
        }
        let code = errno
        Glibc.close(fd)
        guard ok else { unlink(temporary); throw .io("write", temporary, code) }
        guard rename(temporary, machinesPath) == 0 else { throw .io("rename", temporary, errno) }
        SafeFileSystem.fsyncDirectory(directory)
    }
}

public struct DiscoveryStatistics: Sendable, Equatable {
    public var firstSightings = 0
    /// Files written (each one fsync of `discovered.json`, plus one of `bindings` when it grew).
    public var writes = 0
    public var failedWrites = 0
    public var noFreeSlot = 0
    public var forgotten = 0
}

public enum DiscoveryStoreError: Error, Sendable, Equatable, CustomStringConvertible {
    case io(String, String, Int32)
    case unreadable(String, String)
    case bindings(String)
    case closed

    public var description: String {
        switch self {
        case .io(let operation, let path, let code): "discovery: \(operation) \(path) failed: \(String(cString: strerror(code)))"
        case .unreadable(let path, let why): "discovery: \(path) is not readable: \(why)"
        case .bindings(let why): "discovery: \(why)"
        case .closed: "discovery store is closed"
        }
    }
}
