import BootProtocols
import Foundation
import Logging
import NetworkAddresses
import NIOCore
import ServiceLifecycle
import Synchronization

/// Settings of the boot timeline.
public struct BootTimelineConfiguration: Sendable {
    /// Where `timeline.jsonl` lives; nil keeps the timeline in memory only.
    public var stateDirectory: String?
    /// Events kept per node (older ones are dropped, and compacted out of the journal).
    public var eventsPerNode = 200
    /// Nodes tracked at most; beyond it the one seen longest ago is forgotten (any MAC on the segment
    /// that sends a DISCOVER becomes a node, so this bounds memory against a noisy network).
    public var maximumNodes = 20_000
    /// How often pending events are appended to the journal.
    public var flushInterval: Duration = .seconds(1)
    /// Events waiting for the journal at most; past it the oldest are not journalled (they stay in memory).
    public var maximumPendingEvents = 100_000

    public init(stateDirectory: String? = nil) { self.stateDirectory = stateDirectory }
}

/// Per-node boot history: what the DHCP, TFTP and HTTP services saw and what nodes reported.
///
/// Recording is called from NIO event loops of every service, so it only takes a short lock and appends
/// to memory; the journal is written in batches by `run()` (a `Service`), off the hot path. On start the
/// journal is replayed (a torn last line from a crash is skipped) and rewritten compacted.
public final class BootTimeline: Service, Sendable {
    struct NodeRecord {
        var state: NodeBootState
        var events: CircularBuffer<BootEvent>

        mutating func add(_ event: BootEvent, keeping limit: Int) {
            state.apply(event)
            if events.count >= limit { events.removeFirst() }
            events.append(event)
            // Kept in time order: a transfer reported late (see `TFTPTransferReport.finishedAgo`) moves
            // back to where it happened. Normally one comparison.
            var index = events.index(before: events.endIndex)
            while index != events.startIndex {
                let previous = events.index(before: index)
                guard events[previous].time > event.time else { break }
                events.swapAt(previous, index)
                index = previous
            }
        }
    }

    struct State {
        var nodes: [MACAddress: NodeRecord] = [:]
        var macByIP: [IPv4Address: MACAddress] = [:]
        var pending: [BootEvent] = []
        var droppedFromJournal: UInt64 = 0
        var unattributed: UInt64 = 0
        /// Lines appended since the journal was last compacted.
        var journalLines = 0
        /// Journal writes so far (the writer's pace, for tests).
        var flushes = 0
    }

    public let configuration: BootTimelineConfiguration
    private let state: Mutex<State>
    private let journal: TimelineJournal?
    private let now: @Sendable () -> Date
    private let logger: Logger
    /// Wakes the writer early when many events are pending (bufferingNewest(1): a signal, not a queue).
    private let wakeUp: AsyncStream<Void>.Continuation
    private let wakeUps: AsyncStream<Void>
    /// Told each boot's duration when a node reaches `up` (the boot-duration histogram).
    /// Boxed: a closure kept in a `Mutex` and read back with `withLock { $0 }` gains a reabstraction
    /// thunk at each read (perf showed chains of them costing a third of a millisecond per boot by
    /// 10,000 nodes); a class reference passes through unchanged.
    private final class CompletionObserver: Sendable {
        let body: @Sendable (TimeInterval) -> Void
        init(_ body: @escaping @Sendable (TimeInterval) -> Void) { self.body = body }
    }
    private let completionObserver = Mutex<CompletionObserver?>(nil)

    /// Loads and compacts the journal in `configuration.stateDirectory` (created if missing).
    /// - Parameter now: the clock events are stamped with (tests pass a fixed one).
    public init(configuration: BootTimelineConfiguration = .init(), logger: Logger = Logger(label: "imagebuild.timeline"),
                now: @escaping @Sendable () -> Date = { Date() }) throws {
        self.configuration = configuration
        self.logger = logger
        self.now = now
        (wakeUps, wakeUp) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        var initial = State()
        if let directory = configuration.stateDirectory {
            let journal = try TimelineJournal(directory: directory)
            let loaded = try journal.load()
            if loaded.skippedLines > 0 {
                logger.warning("timeline journal: skipped unreadable lines (a crash mid-write leaves a torn last line)",
                               metadata: ["skipped": "\(loaded.skippedLines)", "file": "\(journal.path)"])
            }
            for event in loaded.events {
                Self.insert(event, into: &initial, configuration: configuration)
            }
            try journal.rewrite(Self.allEvents(initial))
            self.journal = journal
        } else {
            self.journal = nil
        }
        state = Mutex(initial)
    }

    // MARK: Recording (hot path)

    /// Records what happened to the node with this MAC (seen from `source`, when there was one);
    /// returns the stored event.
    @discardableResult
    public func record(_ observation: BootObservation, mac: MACAddress, source: IPv4Address? = nil, ago: TimeInterval = 0) -> BootEvent {
        let time = now().addingTimeInterval(-ago)
        let (event, wake, completed) = state.withLock { state -> (BootEvent, Bool, TimeInterval?) in
            let boot = state.nodes[mac]?.state.boot(for: observation) ?? 1
            let event = BootEvent(time: time, mac: mac, boot: boot, observation: observation, source: source)
            Self.insert(event, into: &state, configuration: configuration)
            // This very event took the boot to `up`: its duration is final.
            var completed: TimeInterval?
            if observation.stage == .up, let node = state.nodes[mac]?.state, node.bootCompleted == time {
                completed = node.bootDuration
            }
            if journal != nil {
                if state.pending.count >= configuration.maximumPendingEvents {
                    let dropped = state.pending.count / 2
                    state.pending.removeFirst(dropped)
                    state.droppedFromJournal += UInt64(dropped)
                }
                state.pending.append(event)
            }
            return (event, state.pending.count == 1024, completed)
        }
        if wake { wakeUp.yield() }
        if let completed, let observer = completionObserver.withLock({ $0 }) { observer.body(completed) }
        return event
    }

    /// Calls `observer` with the duration of every boot that reaches `up` from now on (first DHCP or
    /// file of the boot to the `up` report), replacing any earlier observer.
    public func onBootCompleted(_ observer: @escaping @Sendable (TimeInterval) -> Void) {
        completionObserver.withLock { $0 = CompletionObserver(observer) }
    }

    /// Records an observation of a client known only by its IP (TFTP, HTTP), attributing it through the
    /// addresses DHCP acknowledged. Returns nil when no node is known at that address.
    @discardableResult
    public func record(_ observation: BootObservation, ip: IPv4Address, ago: TimeInterval = 0) -> BootEvent? {
        guard let mac = mac(for: ip) else {
            state.withLock { $0.unattributed += 1 }
            return nil
        }
        return record(observation, mac: mac, source: ip, ago: ago)
    }

    /// Remembers that `ip` is `mac` for attributing transfers, which carry only an address (DHCP acks do
    /// this by themselves; the bootscript endpoint calls it too). Never a reason to believe a stage
    /// report: `ReportAdmission` asks the inventory and the leases, which no HTTP client can teach.
    public func learn(ip: IPv4Address, mac: MACAddress) {
        state.withLock { $0.macByIP[ip] = mac }
    }

    public func mac(for ip: IPv4Address) -> MACAddress? {
        state.withLock { $0.macByIP[ip] }
    }

    /// The TFTP server's per-transfer report, attributed by the client's address.
    @discardableResult
    public func record(_ report: TFTPTransferReport) -> BootEvent? {
        guard let ip = report.client.ipv4Address else { return nil }
        let outcome: TransferOutcome
        switch report.result {
        case .completed, .delivered: outcome = .completed
        case .abortedByClient, .superseded: outcome = .incomplete(report.result.description)
        case .failed, .cancelled: outcome = .failed(report.result.description)
        case .rejected(_, let reason): outcome = .refused(reason)
        }
        return record(.transfer(.tftp, path: report.path, bytes: report.bytes, size: nil, outcome: outcome), ip: ip,
                      ago: Double(report.finishedAgo.nanoseconds) / 1e9)
    }

    private static func insert(_ event: BootEvent, into state: inout State, configuration: BootTimelineConfiguration) {
        if state.nodes[event.mac] == nil {
            if state.nodes.count >= configuration.maximumNodes,
               let oldest = state.nodes.min(by: { ($0.value.state.lastSeen ?? .distantPast) < ($1.value.state.lastSeen ?? .distantPast) }) {
                state.nodes.removeValue(forKey: oldest.key)
            }
            state.nodes[event.mac] = NodeRecord(state: NodeBootState(mac: event.mac),
                                                events: CircularBuffer(initialCapacity: 16))
        }
        state.nodes[event.mac]!.add(event, keeping: configuration.eventsPerNode)
        if case .dhcp(.ack, let address?, _) = event.observation, !address.isAny {
            state.macByIP[address] = event.mac
        }
    }

    // MARK: Reading

    /// Every node seen, in MAC order.
    public func nodes() -> [NodeBootState] {
        state.withLock { $0.nodes.values.map(\.state) }.sorted { $0.mac < $1.mac }
    }

    public func node(_ mac: MACAddress) -> NodeBootState? {
        state.withLock { $0.nodes[mac]?.state }
    }

    /// The node's kept events, oldest first.
    public func events(for mac: MACAddress) -> [BootEvent] {
        state.withLock { state in state.nodes[mac].map { Array($0.events) } ?? [] }
    }

    /// Observations from clients no node is known for (metrics, diagnostics).
    public var unattributedCount: UInt64 { state.withLock { $0.unattributed } }

    public var currentTime: Date { now() }

    private static func allEvents(_ state: State) -> [BootEvent] {
        state.nodes.values.flatMap(\.events).sorted { $0.time < $1.time }
    }

    // MARK: Journal

    /// Journal writes so far (the writer's pace, for tests).
    var flushCount: Int { state.withLock { $0.flushes } }

    /// Appends pending events to the journal now (the writer does this every `flushInterval`), and
    /// compacts it when it has grown to several times what is kept.
    public func flush() throws {
        guard let journal else { return }
        try journal.serialized {
            let (batch, lines, kept) = state.withLock { state -> ([BootEvent], Int, Int) in
                let batch = state.pending
                state.pending.removeAll(keepingCapacity: true)
                state.journalLines += batch.count
                state.flushes += 1
                return (batch, state.journalLines, state.nodes.count * configuration.eventsPerNode)
            }
            if !batch.isEmpty { try journal.append(batch) }
            if lines > max(10_000, 2 * kept) { try compact(journal) }
        }
    }

    private func compact(_ journal: TimelineJournal) throws {
        // Everything pending is also in the rings, so the snapshot replaces both.
        let snapshot = state.withLock { state -> [BootEvent] in
            state.pending.removeAll(keepingCapacity: true)
            state.journalLines = 0
            return Self.allEvents(state)
        }
        try journal.rewrite(snapshot)
        state.withLock { $0.journalLines += snapshot.count }
    }

    /// Writes the journal in batches until graceful shutdown or cancellation, then flushes once more.
    ///
    /// One loop consumes the wake-up stream for the whole run; a ticker task adds a wake-up every
    /// `flushInterval`. (Iterating the stream in a child task that is then cancelled would finish the
    /// stream for good, and every later wait would return at once: a writer spinning on a full core.)
    public func run() async throws {
        guard journal != nil else {
            try? await gracefulShutdown()
            return
        }
        let wakeUps = self.wakeUps
        let wakeUp = self.wakeUp
        let interval = configuration.flushInterval
        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: interval)
                        wakeUp.yield()
                    }
                }
                for await _ in wakeUps {
                    do { try flush() } catch {
                        logger.error("timeline journal: write failed", metadata: ["error": "\(error)"])
                    }
                    if Task.isCancelled || Task.isShuttingDownGracefully { break }
                }
                group.cancelAll()
            }
        } onGracefulShutdown: {
            self.wakeUp.yield()
        }
        do { try flush() } catch {
            logger.error("timeline journal: final write failed", metadata: ["error": "\(error)"])
        }
    }
}

extension SocketAddress {
    /// The IPv4 address, also of an IPv4-mapped IPv6 peer (a dual-stack listener sees those).
    var ipv4Address: NetworkAddresses.IPv4Address? {
        switch self {
        case .v4(let address):
            return NetworkAddresses.IPv4Address(rawValue: UInt32(bigEndian: address.address.sin_addr.s_addr))
        case .v6(let address):
            let bytes = withUnsafeBytes(of: address.address.sin6_addr) { Array($0) }
            guard bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xFF, bytes[11] == 0xFF else { return nil }
            return NetworkAddresses.IPv4Address(bytes[12], bytes[13], bytes[14], bytes[15])
        default:
            return nil
        }
    }
}
