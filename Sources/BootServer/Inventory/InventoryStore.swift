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
            return FileStamp(device: UInt64(st.st_dev), inode: UInt64(st.st_ino), size: Int64(st.st_size),
                             mtimeSec: st.st_mtim.tv_sec, mtimeNsec: st.st_mtim.tv_nsec)
        }
    }

    public let path: String
    /// How often `run()` looks at the file; zero: never (reloads only through `reload()`).
    public let pollInterval: Duration
    private let loader: @Sendable (String) throws -> Inventory
    private let logger: Logger
    private let lock = NSLock()
    private var snapshot: Snapshot
    private var stamp: FileStamp?
    private var lastErrorText: String?
    private var observers: [UInt64: @Sendable (Snapshot) -> Void] = [:]
    private var nextObserver: UInt64 = 0

    /// Loads `path` once; throws the located error when even the first load fails (nothing to fall back to).
    public init(path: String, pollInterval: Duration = .milliseconds(500), logger: Logger,
                loader: @escaping @Sendable (String) throws -> Inventory = { try InventoryLoader.load(path: $0) }) throws {
        self.path = path
        self.pollInterval = pollInterval
        self.loader = loader
        self.logger = logger
        let stamp = FileStamp.of(path)
        snapshot = Snapshot(inventory: try loader(path), generation: 1, loadedAt: Date())
        self.stamp = stamp
    }

    /// The inventory in force.
    public var current: Snapshot {
        lock.lock()
        defer { lock.unlock() }
        return snapshot
    }

    /// The error of the last rejected reload, cleared by the next good one (for the status page).
    public var lastError: String? {
        lock.lock()
        defer { lock.unlock() }
        return lastErrorText
    }

    /// Reloads when the file's stamp differs from the one last read.
    @discardableResult
    public func reloadIfChanged() -> ReloadOutcome {
        let now = FileStamp.of(path)
        lock.lock()
        let same = now == stamp
        lock.unlock()
        return same ? .unchanged : reload(stamp: now)
    }

    /// Reloads unconditionally (SIGHUP).
    @discardableResult
    public func reload() -> ReloadOutcome { reload(stamp: FileStamp.of(path)) }

    private func reload(stamp newStamp: FileStamp?) -> ReloadOutcome {
        let outcome: ReloadOutcome
        let notify: [@Sendable (Snapshot) -> Void]
        do {
            let inventory = try loader(path)
            lock.lock()
            stamp = newStamp
            snapshot = Snapshot(inventory: inventory, generation: snapshot.generation + 1, loadedAt: Date())
            lastErrorText = nil
            outcome = .reloaded(snapshot)
            notify = Array(observers.values)
            lock.unlock()
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
        if case .reloaded(let s) = outcome {
            logger.notice("reloaded \(fileName) (\(s.inventory.nodes.count) node\(s.inventory.nodes.count == 1 ? "" : "s"))", metadata: [
                "file": "\(path)", "generation": "\(s.generation)",
            ])
            for observer in notify { observer(s) }
        }
        return outcome
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
