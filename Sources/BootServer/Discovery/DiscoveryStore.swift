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

    /// Option 93's code as last recorded (not stored: `architecture` is), so a repeat costs no string.
    var architectureCode: UInt16?

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
        // A machine repeats itself: the texts are made again only when the bytes differ (every packet
        // of every unknown machine comes through here).
        if let arch = options.clientArchitecture, arch.rawValue != architectureCode {
            architectureCode = arch.rawValue
            architecture = "\(arch)"
        }
        Self.update(&vendorClass, options.vendorClassIdentifier)
        Self.update(&userClass, options.userClass)
        Self.update(&requestedHostname, options[.hostName])
        if !message.giaddr.isAny { relay = message.giaddr.description }
        if let agent = options.relayAgentInformation {
            if let id = agent.circuitID { circuitID = DHCPRelayAgentInformation.printable(id) }
            if let id = agent.remoteID { remoteID = DHCPRelayAgentInformation.printable(id) }
        }
        if let interface { self.interface = interface }
    }

    static func update(_ field: inout String?, _ bytes: ArraySlice<UInt8>?) {
        guard let bytes else { return }
        if let field, field.utf8.elementsEqual(bytes.prefix(64)) { return }
        field = text(bytes)
    }

    /// This machine as one line of JSON, keys sorted as JSONEncoder's `.sortedKeys` would (the
    /// reader is JSONDecoder).
    func appendJSONLine(to bytes: inout [UInt8]) {
        var first = true
        func key(_ name: StaticString) {
            if !first { bytes.append(UInt8(ascii: ",")) }
            first = false
            bytes.append(UInt8(ascii: "\""))
            name.withUTF8Buffer { bytes.append(contentsOf: $0) }
            bytes.append(contentsOf: "\":".utf8)
        }
        func string(_ name: StaticString, _ value: String?) {
            guard let value else { return }
            key(name)
            bytes.append(UInt8(ascii: "\""))
            for byte in value.utf8 {
                switch byte {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"): bytes += [UInt8(ascii: "\\"), byte]
                case 0..<0x20: bytes += Array(String(format: "\\u%04x", byte).utf8)
                default: bytes.append(byte)
                }
            }
            bytes.append(UInt8(ascii: "\""))
        }
        func number(_ name: StaticString, _ value: some BinaryInteger) {
            key(name)
            bytes.append(contentsOf: String(value).utf8)
        }
        bytes.append(UInt8(ascii: "{"))
        string("architecture", architecture)
        string("bound_as", boundAs)
        string("circuit_id", circuitID)
        number("first_seen", firstSeen)
        string("interface", interface)
        string("last_message", lastMessage)
        number("last_seen", lastSeen)
        string("mac", mac)
        string("relay", relay)
        string("remote_id", remoteID)
        string("requested_hostname", requestedHostname)
        number("requests", requests)
        string("user_class", userClass)
        string("vendor_class", vendorClass)
        bytes += [UInt8(ascii: "}"), UInt8(ascii: "\n")]
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
/// an ACK for the lease journal): one writer thread takes everything queued, appends it with one
/// write and one fdatasync (group commit), so a storm of unknown machines costs one fsync per batch,
/// not one per packet, and each batch writes only its new machines. Later sightings only update
/// memory; the writer saves them by rewriting the journal (aside, fsync, rename) at most every
/// `compactInterval` (a crash loses at most that much of `last_seen` and the request counts).
///
/// Files, in `STATE_DIR/discovery/`: `discovered` (the sightings: one JSON object per line, a later
/// line for a MAC replacing an earlier one, a torn last line ignored) and `bindings`
/// (`NodeBindingJournal`, append-only, shared with `nodes adopt`).
///
/// Thread safety: one lock around the in-memory state; the DHCP event loop calls `observe` and
/// `bind`, which never touch the disk.
public final class DiscoveryStore: @unchecked Sendable {
    public typealias Completion = @Sendable (Result<Void, DiscoveryStoreError>) -> Void

    public let directory: String
    public var machinesPath: String { Self.machinesPath(in: directory) }
    public static func machinesPath(in directory: String) -> String { directory + "/discovered" }
    public var bindingsPath: String { directory + "/bindings" }
    /// At most this many machines are remembered (a flood of random MACs costs bounded memory and
    /// disk): when full, the eighth seen longest ago is forgotten.
    public let maximumMachines: Int
    public let compactInterval: Duration
    /// Called on the writer thread after new bindings are durable, before the waiting packets are
    /// answered: `serve` re-reads the bindings into the live inventory here.
    private let onBindings: @Sendable ([NodeBinding], stat) -> Void
    private let logger: Logger

    private let condition = NSCondition()
    private var machines: [MACAddress: DiscoveredMachine] = [:]
    private var dirty = false
    /// First sightings not yet appended.
    private var new: [MACAddress] = []
    private var durableRequested = false
    private var completions: [Completion] = []
    private var pending: [NodeBinding] = []
    /// Bindings this process made (durable or queued): their slots are taken even before the live
    /// inventory shows them, and a MAC is never bound twice.
    private var made: [MACAddress: NodeBinding] = [:]
    private var stopping = false
    private var stopped = false
    /// The bindings journal's size after this writer's last append (nobody else wrote while it stays).
    private var journalSize: Int?
    /// Hostnames and addresses taken, kept between `bind` calls (see `bind`).
    private var slots: SlotCache?

    private struct SlotCache {
        var baseGeneration: Int
        var nodeCount: Int
        var names: Set<String>
        var addresses: Set<IPv4Address>
        var cursor: Int
    }
    private var statistics = DiscoveryStatistics()

    public init(directory: String, maximumMachines: Int = 65_536, compactInterval: Duration = .seconds(10), logger: Logger,
                onBindings: @escaping @Sendable ([NodeBinding], stat) -> Void = { _, _ in }) throws {
        self.directory = directory
        self.maximumMachines = maximumMachines
        self.compactInterval = compactInterval
        self.logger = logger
        self.onBindings = onBindings
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for machine in try Self.readMachines(path: Self.machinesPath(in: directory)) {
            if let mac = MACAddress(machine.mac) { machines[mac] = machine }
        }
        // Start from a clean, compact file (a torn line from a crash goes with it).
        try writeMachines(Array(machines.values))
        let thread = Thread { [self] in writerLoop() }
        thread.name = "discovery-writer"
        thread.start()
    }

    /// The sightings journal; a missing file reads as empty, a line that does not parse (a write a
    /// crash cut short) is skipped, a later line for a MAC replaces an earlier one.
    public static func readMachines(path: String) throws -> [DiscoveredMachine] {
        guard FileManager.default.fileExists(atPath: path) else { return [] }
        guard let data = FileManager.default.contents(atPath: path) else { throw DiscoveryStoreError.io("read", path, errno) }
        let decoder = JSONDecoder()
        var order: [String] = []
        var byMAC: [String: DiscoveredMachine] = [:]
        for line in data.split(separator: UInt8(ascii: "\n")) where line.first == UInt8(ascii: "{") {
            guard let machine = try? decoder.decode(DiscoveredMachine.self, from: Data(line)) else { continue }
            if byMAC[machine.mac] == nil { order.append(machine.mac) }
            byMAC[machine.mac] = machine
        }
        return order.map { byMAC[$0]! }
    }

    static let header = "# imagebuild discovered machines v1: one JSON object per line, the latest per MAC counts\n"

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
        if machines.count >= maximumMachines {
            // The eighth seen longest ago makes room at once: one sort per many new machines, not a
            // scan per packet of a flood.
            let oldest = machines.sorted { $0.value.lastSeen < $1.value.lastSeen }.prefix(max(1, maximumMachines / 8))
            for (mac, _) in oldest { machines[mac] = nil }
            statistics.forgotten += oldest.count
        }
        machines[mac] = DiscoveredMachine(mac: mac, message: message, interface: interface, at: now)
        new.append(mac)
        statistics.firstSightings += 1
        return true
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
    ///
    /// The taken hostnames and addresses are kept between calls: built from the inventory once per
    /// `baseGeneration` (nodes.yaml or the whole journal read again), then only the nodes appended
    /// since (the server's own bindings come last) are added, and the search resumes after the last
    /// slot given. A storm of new machines costs no rebuild per machine.
    public func bind(_ mac: MACAddress, in inventory: Inventory, baseGeneration: Int, at now: Int64) -> BindOutcome {
        guard let discover = inventory.discover else { return .notConfigured }
        condition.lock()
        defer { condition.unlock() }
        if let earlier = made[mac] { return .alreadyBound(earlier) }
        var cache: SlotCache
        if let slots, slots.baseGeneration == baseGeneration, inventory.nodes.count >= slots.nodeCount {
            cache = slots
            for node in inventory.nodes[cache.nodeCount...] {
                cache.names.insert(node.hostname.lowercased())
                if let ip = node.ip { cache.addresses.insert(ip) }
            }
        } else {
            cache = SlotCache(baseGeneration: baseGeneration, nodeCount: 0, names: Set(inventory.nodes.map { $0.hostname.lowercased() }),
                              addresses: Set(inventory.nodes.compactMap(\.ip)), cursor: 0)
            for binding in made.values {
                cache.names.insert(binding.hostname.lowercased())
                if let ip = binding.ip { cache.addresses.insert(ip) }
            }
        }
        cache.nodeCount = inventory.nodes.count
        guard let slot = inventory.nextDiscoverySlot(from: cache.cursor, takenNames: cache.names, takenAddresses: cache.addresses) else {
            slots = cache
            statistics.noFreeSlot += 1
            return .noFreeSlot(inventory.discoverySummary ?? "")
        }
        cache.cursor = slot.index + 1
        cache.names.insert(slot.hostname.lowercased())
        cache.addresses.insert(slot.ip)
        slots = cache
        // Located at the journal (its line is known only once written: `nodes explain` reads it there).
        let binding = NodeBinding(mac: mac, hostname: slot.hostname, ip: slot.ip, group: discover.group, boundAt: now, origin: .discover,
                                  location: ConfigLocation(file: bindingsPath, line: 0, column: 0))
        made[mac] = binding
        pending.append(binding)
        machines[mac]?.boundAs = slot.hostname
        new.append(mac)
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
        var lastCompaction = ContinuousClock.now
        while true {
            condition.lock()
            while !durableRequested && new.isEmpty && !stopping {
                let due = lastCompaction + compactInterval
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
            // Appended: the new machines as they are now. Rewritten (compaction): all of them, when
            // later sightings are due to be saved or the server stops.
            let compact = dirty && (finish || ContinuousClock.now >= lastCompaction + compactInterval)
            let appended = compact ? [] : new.compactMap { machines[$0] }
            let all = compact ? Array(machines.values) : []
            pending.removeAll()
            completions.removeAll()
            new.removeAll()
            durableRequested = false
            if compact { dirty = false }
            condition.unlock()

            var result: Result<Void, DiscoveryStoreError> = .success(())
            if !bindings.isEmpty {
                do {
                    let update = try NodeBindingJournal.update(path: bindingsPath, knownSize: journalSize) { contents in
                        // A MAC adopted meanwhile by hand keeps that binding.
                        let taken = Set(contents.bindings.map(\.mac))
                        return bindings.filter { !taken.contains($0.mac) }
                    }
                    journalSize = Int(update.status.st_size)
                    for binding in update.appended {
                        logger.notice("bound \(binding.mac) as \(binding.hostname) \(binding.ip.map { "\($0)" } ?? "")", metadata: [
                            "mac": "\(binding.mac)", "hostname": "\(binding.hostname)", "file": "\(bindingsPath)",
                        ])
                    }
                    onBindings(update.appended, update.status)
                } catch {
                    result = .failure(.bindings("\(error)"))
                    logger.error("bindings not written; the machines stay unbound", metadata: ["error": "\(error)"])
                    condition.lock()
                    for binding in bindings { made[binding.mac] = nil; machines[binding.mac]?.boundAs = nil }
                    statistics.failedWrites += 1
                    condition.unlock()
                }
            }
            do {
                if compact {
                    try writeMachines(all)
                    lastCompaction = ContinuousClock.now
                } else if !appended.isEmpty {
                    try appendMachines(appended)
                }
            } catch {
                result = .failure(error)
                logger.error("discovered machines not written", metadata: ["error": "\(error)"])
                condition.lock()
                statistics.failedWrites += 1
                condition.unlock()
            }
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

    /// One JSON object per machine and line, written by hand: JSONEncoder cost the DHCP CPU more than
    /// the rest of a first sighting in a storm of new machines (the writer shares the server's CPU).
    static func lines(_ machines: [DiscoveredMachine]) throws(DiscoveryStoreError) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(machines.count * 256)
        for machine in machines { machine.appendJSONLine(to: &bytes) }
        return bytes
    }

    /// Appends the new machines with one write and one fdatasync.
    private func appendMachines(_ machines: [DiscoveredMachine]) throws(DiscoveryStoreError) {
        let bytes = try Self.lines(machines)
        let fd = open(machinesPath, O_WRONLY | O_APPEND | O_CLOEXEC)
        guard fd >= 0 else { throw .io("open", machinesPath, errno) }
        defer { Glibc.close(fd) }
        guard Self.writeAll(fd, bytes), fdatasync(fd) == 0 else { throw .io("write", machinesPath, errno) }
        condition.lock()
        statistics.appends += 1
        condition.unlock()
    }

    /// Compaction: every machine once, written aside, fsynced, renamed over the journal, the directory
    /// fsynced: the file is the old or the new list, whole.
    private func writeMachines(_ machines: [DiscoveredMachine]) throws(DiscoveryStoreError) {
        let bytes = Array(Self.header.utf8) + (try Self.lines(machines.sorted { $0.mac < $1.mac }))
        let temporary = machinesPath + ".new"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640)
        guard fd >= 0 else { throw .io("open", temporary, errno) }
        let ok = Self.writeAll(fd, bytes) && fsync(fd) == 0
        let code = errno
        Glibc.close(fd)
        guard ok else { unlink(temporary); throw .io("write", temporary, code) }
        guard rename(temporary, machinesPath) == 0 else { throw .io("rename", temporary, errno) }
        SafeFileSystem.fsyncDirectory(directory)
        condition.lock()
        statistics.compactions += 1
        condition.unlock()
    }

    private static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool { SafeFileSystem.writeAll(fd, bytes) == nil }
}

public struct DiscoveryStatistics: Sendable, Equatable {
    public var firstSightings = 0
    /// Appends of new machines (one fdatasync each, however many machines).
    public var appends = 0
    /// Rewrites of the whole journal (saving later sightings).
    public var compactions = 0
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
