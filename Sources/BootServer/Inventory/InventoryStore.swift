import Foundation
import ImageBuildKit
import Logging
import ServiceLifecycle

/// The inventory (`nodes.yaml`) currently in force, shared by the DHCP and HTTP services.
///
/// Reloads when the file changes (its mtime/size/inode are polled, every 500 ms by default; no
/// polling with a zero interval) and when `reload()` is called, which `serve` does on SIGHUP
/// (see `HangupSignal`). A file that does not load is rejected with its located error and the last good inventory
/// stays in force, so a typo never takes the boot service down. Readers take `current` (one lock,
/// no I/O) or subscribe with `onChange` / `updates()` to rebuild their derived views once per change.
public final class InventoryStore: Service, @unchecked Sendable {
    /// One loaded inventory. `generation` grows by one per accepted reload.
    public struct Snapshot: Sendable {
        public let inventory: Inventory
        public let generation: Int
        public let loadedAt: Date
        /// Grows when nodes.yaml or the whole bindings journal is read again; stays when the server
        /// only appended its own bindings (`addBindings`), which come last in `inventory.nodes`.
        public var baseGeneration = 0
    }

    public enum ReloadOutcome: Sendable, CustomStringConvertible {
        /// The file has not changed since it was last read (only from `reloadIfChanged`).
        case unchanged
        case reloaded(Snapshot)
        /// The file changed but does not load; the previous inventory stays in force.
        case rejected(String)

        public var description: String {
            switch self {
            case .unchanged: "unchanged"
            case .reloaded(let s): "reloaded generation \(s.generation) (\(s.inventory.nodes.count) nodes)"
            case .rejected(let error): "rejected, previous inventory kept: \(error)"
            }
        }
    }

    /// What identifies a version of the file without reading it.
    struct FileStamp: Equatable {
        var device: UInt64, inode: UInt64, size: Int64, mtimeSec: Int, mtimeNsec: Int

        static func of(_ path: String) -> FileStamp? {
            var st = stat()
            guard stat(path, &st) == 0 else { return nil }
            return FileStamp(st)
        }

        init(_ st: stat) {
            self.init(device: UInt64(st.st_dev), inode: UInt64(st.st_ino), size: Int64(st.st_size),
                      mtimeSec: st.st_mtim.tv_sec, mtimeNsec: st.st_mtim.tv_nsec)
        }

        init(device: UInt64, inode: UInt64, size: Int64, mtimeSec: Int, mtimeNsec: Int) {
            self.device = device
            self.inode = inode
            self.size = size
            self.mtimeSec = mtimeSec
            self.mtimeNsec = mtimeNsec
        }
    }

    public let path: String
    /// The bindings journal merged into nodes.yaml (`NodeBindingJournal`, in the server's state
    /// directory); nil: nodes.yaml alone.
    public let bindingsPath: String?
    /// How often `run()` looks at the file; zero: never (reloads only through `reload()`).
    public let pollInterval: Duration
    private let loader: @Sendable (String) throws -> Inventory
    private let logger: Logger
    private let lock = NSLock()
    /// Held for a whole reload, so a reload of nodes.yaml and one of the bindings never interleave.
    private let reloadLock = NSLock()
    private var snapshot: Snapshot
    /// nodes.yaml as last loaded, before the bindings.
    private var base: Inventory
    private var bindings: [NodeBinding] = []
    private var notes: [String] = []
    private var baseGeneration = 1
    private var stamp: FileStamp?
    private var bindingsStamp: FileStamp?
    private var lastErrorText: String?
    private var observers: [UInt64: @Sendable (Snapshot) -> Void] = [:]
    private var nextObserver: UInt64 = 0

    /// Loads `path` once (and the bindings, when given); throws the located error when even the first
    /// load fails (nothing to fall back to).
    public init(path: String, bindingsPath: String? = nil, pollInterval: Duration = .milliseconds(500), logger: Logger,
                loader: @escaping @Sendable (String) throws -> Inventory = { try InventoryLoader.load(path: $0) }) throws {
        self.path = path
        self.bindingsPath = bindingsPath
        self.pollInterval = pollInterval
        self.loader = loader
        self.logger = logger
        let stamp = FileStamp.of(path)
        base = try loader(path)
        snapshot = Snapshot(inventory: base, generation: 1, loadedAt: Date(), baseGeneration: 1)
        self.stamp = stamp
        if let bindingsPath {
            bindingsStamp = FileStamp.of(bindingsPath)
            bindings = Self.readBindings(bindingsPath, logger: logger)
            let merged = mergeAndLog(base)
            snapshot = Snapshot(inventory: merged, generation: 1, loadedAt: Date(), baseGeneration: 1)
        }
    }

    /// The inventory in force: nodes.yaml with the bindings merged (nodes.yaml wins).
    public var current: Snapshot {
        lock.lock()
        defer { lock.unlock() }
        return snapshot
    }

    /// nodes.yaml in force, before the bindings.
    public var baseInventory: Inventory {
        lock.lock()
        defer { lock.unlock() }
        return base
    }

    /// The bindings read last (all of them, including those the merge left out).
    public var currentBindings: [NodeBinding] {
        lock.lock()
        defer { lock.unlock() }
        return bindings
    }

    /// The error of the last rejected reload, cleared by the next good one (for the status page).
    public var lastError: String? {
        lock.lock()
        defer { lock.unlock() }
        return lastErrorText
    }

    /// Reloads when the file's stamp (or the bindings journal's) differs from the one last read.
    @discardableResult
    public func reloadIfChanged() -> ReloadOutcome {
        let now = FileStamp.of(path)
        let bindingsNow = bindingsPath.flatMap(FileStamp.of)
        lock.lock()
        let same = now == stamp
        let sameBindings = bindingsNow == bindingsStamp
        lock.unlock()
        if !same { return reload(stamp: now) }
        return sameBindings ? .unchanged : reloadBindings()
    }

    /// Reloads unconditionally (SIGHUP).
    @discardableResult
    public func reload() -> ReloadOutcome { reload(stamp: FileStamp.of(path)) }

    /// Re-reads the bindings journal and merges it with the nodes.yaml in force (nodes.yaml is not
    /// read again): what the server does after it bound a machine, and when `nodes adopt` wrote.
    @discardableResult
    public func reloadBindings() -> ReloadOutcome {
        guard let bindingsPath else { return .unchanged }
        reloadLock.lock()
        defer { reloadLock.unlock() }
        let stamp = FileStamp.of(bindingsPath)
        let read = Self.readBindings(bindingsPath, logger: logger)
        lock.lock()
        bindingsStamp = stamp
        bindings = read
        let base = self.base
        lock.unlock()
        return install(mergeAndLog(base), reason: "bindings")
    }

    /// The server's own new bindings, just appended to the journal (`journal`: its `stat` taken under
    /// the journal's lock right after): merged into the inventory in force without reading nodes.yaml
    /// or the journal again, so a storm of new machines costs no re-read per batch.
    @discardableResult
    public func addBindings(_ new: [NodeBinding], journal: stat) -> ReloadOutcome {
        reloadLock.lock()
        defer { reloadLock.unlock() }
        lock.lock()
        bindingsStamp = FileStamp(journal)
        bindings += new
        let current = snapshot.inventory
        lock.unlock()
        // A reload of the whole journal in between has merged them already.
        let fresh = new.filter { binding in current.node(mac: binding.mac).map { $0.location.file != bindingsPath } ?? true }
        let (merged, notes) = current.merging(fresh)
        for note in notes { logger.warning("\(note)") }
        return install(merged, reason: "bindings", keepBase: true)
    }

    private static func readBindings(_ path: String, logger: Logger) -> [NodeBinding] {
        do {
            let contents = try NodeBindingJournal.read(path: path)
            for problem in contents.problems { logger.error("\(problem)") }
            return contents.bindings
        } catch {
            logger.error("bindings not read, nodes.yaml alone is in force: \(error)")
            return []
        }
    }

    /// `base` with the bindings merged; each merge decision is logged once (when it first appears).
    private func mergeAndLog(_ base: Inventory) -> Inventory {
        lock.lock()
        let bindings = self.bindings
        lock.unlock()
        let (merged, notes) = base.merging(bindings)
        let texts = notes.map(\.description)
        lock.lock()
        let new = texts.filter { !self.notes.contains($0) }
        self.notes = texts
        lock.unlock()
        for note in new { logger.warning("\(note)") }
        return merged
    }

    private func reload(stamp newStamp: FileStamp?) -> ReloadOutcome {
        reloadLock.lock()
        defer { reloadLock.unlock() }
        let inventory: Inventory
        do {
            inventory = try loader(path)
        } catch {
            lock.lock()
            // Remember the stamp so a broken file is reported once, not every poll.
            stamp = newStamp
            lastErrorText = "\(error)"
            lock.unlock()
            logger.error("\(fileName) rejected, the previous inventory stays in force: \(error)", metadata: [
                "file": "\(path)", "generation": "\(current.generation)",
            ])
            return .rejected("\(error)")
        }
        // SIGHUP re-reads the bindings too (with polling off, it is how `nodes adopt` reaches the server).
        let read = bindingsPath.map { (FileStamp.of($0), Self.readBindings($0, logger: logger)) }
        lock.lock()
        stamp = newStamp
        base = inventory
        if let read { (bindingsStamp, bindings) = read }
        lastErrorText = nil
        lock.unlock()
        return install(bindingsPath == nil ? inventory : mergeAndLog(inventory), reason: fileName)
    }

    private func install(_ inventory: Inventory, reason: String, keepBase: Bool = false) -> ReloadOutcome {
        lock.lock()
        if !keepBase { baseGeneration += 1 }
        snapshot = Snapshot(inventory: inventory, generation: snapshot.generation + 1, loadedAt: Date(), baseGeneration: baseGeneration)
        let s = snapshot
        let notify = Array(observers.values)
        lock.unlock()
        let count = s.inventory.nodes.count
        logger.notice("reloaded \(reason) (\(count) node\(count == 1 ? "" : "s"))", metadata: [
            "file": "\(path)", "generation": "\(s.generation)",
        ])
        for observer in notify { observer(s) }
        return .reloaded(s)
    }

    /// Calls `body` with every accepted reload (on the reloading thread) until the token is cancelled.
    public func onChange(_ body: @escaping @Sendable (Snapshot) -> Void) -> ObservationToken {
        lock.lock()
        nextObserver += 1
        let id = nextObserver
        observers[id] = body
        lock.unlock()
        return ObservationToken { [weak self] in
            guard let self else { return }
            self.lock.lock()
            self.observers[id] = nil
            self.lock.unlock()
        }
    }

    /// Accepted reloads as an async sequence (newest wins when the consumer is slow).
    public func updates() -> AsyncStream<Snapshot> {
        let (stream, continuation) = AsyncStream.makeStream(of: Snapshot.self, bufferingPolicy: .bufferingNewest(1))
        let token = onChange { continuation.yield($0) }
        continuation.onTermination = { _ in token.cancel() }
        return stream
    }

    private var fileName: String { (path as NSString).lastPathComponent }

    /// Polls the file until cancelled or shut down gracefully (just waits when polling is off).
    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                // Zero interval: nothing to poll, sleep until cancelled.
                try? await Task.sleep(for: self.pollInterval > .zero ? self.pollInterval : .seconds(3600))
                if Task.isCancelled { break }
                if self.pollInterval > .zero { self.reloadIfChanged() }
            }
        }
    }
}

/// Ends an `onChange` subscription.
public final class ObservationToken: Sendable {
    private let cancelBody: @Sendable () -> Void
    init(_ cancel: @escaping @Sendable () -> Void) { cancelBody = cancel }
    public func cancel() { cancelBody() }
}
