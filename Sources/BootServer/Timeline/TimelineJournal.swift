import Foundation
import Synchronization

/// Why the timeline's journal could not be used.
public enum TimelineJournalError: Error, CustomStringConvertible {
    case system(operation: String, path: String, errno: Int32)
    case cannotCreateDirectory(path: String, reason: String)

    public var description: String {
        switch self {
        case .cannotCreateDirectory(let path, let reason):
            "timeline journal: cannot create the state directory '\(path)': \(reason)"
        case .system(let operation, let path, let code):
            "timeline journal: \(operation) '\(path)' failed: \(String(cString: strerror(code)))"
        }
    }
}

/// `timeline.jsonl`: one JSON event per line, appended in batches, rewritten (compacted) through a
/// temporary file and a rename so a crash leaves either the old or the new file, plus at worst a torn
/// last line of a batch append, which `load()` skips.
final class TimelineJournal: Sendable {
    let path: String
    let directory: String
    /// Serialises appends and rewrites; the descriptor is swapped by `rewrite`.
    private let file: Mutex<Int32>
    private let flushLock = NSLock()

    init(directory: String) throws {
        self.directory = directory
        path = directory + "/timeline.jsonl"
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw TimelineJournalError.cannotCreateDirectory(path: directory, reason: error.localizedDescription)
        }
        file = Mutex(-1)
    }

    deinit {
        file.withLock { if $0 >= 0 { close($0) } }
    }

    struct Loaded {
        var events: [BootEvent]
        var skippedLines: Int
    }

    /// Reads every readable event, in file order. A missing file is an empty journal.
    func load() throws -> Loaded {
        guard let data = FileManager.default.contents(atPath: path) else { return Loaded(events: [], skippedLines: 0) }
        let decoder = JSONDecoder()
        var events: [BootEvent] = []
        var skipped = 0
        for line in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true) {
            if let event = try? decoder.decode(BootEvent.self, from: Data(line)) {
                events.append(event)
            } else {
                skipped += 1
            }
        }
        return Loaded(events: events, skippedLines: skipped)
    }

    /// Runs `body` (take a batch, append it) as one step: two overlapping flushes (the writer and a
    /// shutdown flush) must not write their batches out of order.
    func serialized<T>(_ body: () throws -> T) rethrows -> T {
        flushLock.lock()
        defer { flushLock.unlock() }
        return try body()
    }

    /// One JSON object per line, as the journal stores events.
    static func lines(_ events: [BootEvent]) -> Data {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(events.count * 160)
        for event in events {
            event.writeJSON(into: &bytes, includeSummary: false)
            bytes.append(UInt8(ascii: "\n"))
        }
        return Data(bytes)
    }

    /// Appends events with one write(2) per batch (O_APPEND: a crash tears at most the last line).
    func append(_ events: [BootEvent]) throws {
        let bytes = Self.lines(events)
        try file.withLock { descriptor in
            if descriptor < 0 { descriptor = try openForAppend() }
            try writeAll(descriptor, bytes)
        }
    }

    /// Replaces the journal with exactly `events`, durably (write aside, fsync, rename, fsync the folder).
    func rewrite(_ events: [BootEvent]) throws {
        let bytes = Self.lines(events)
        let temporary = path + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw TimelineJournalError.system(operation: "create", path: temporary, errno: errno) }
        do {
            try writeAll(fd, bytes)
            guard fsync(fd) == 0 else { throw TimelineJournalError.system(operation: "fsync", path: temporary, errno: errno) }
        } catch {
            close(fd)
            throw error
        }
        close(fd)
        try file.withLock { descriptor in
            guard rename(temporary, path) == 0 else {
                throw TimelineJournalError.system(operation: "rename onto", path: path, errno: errno)
            }
            let dir = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if dir >= 0 { fsync(dir); close(dir) }
            if descriptor >= 0 { close(descriptor) }
            descriptor = try openForAppend()
        }
    }

    private func openForAppend() throws -> Int32 {
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw TimelineJournalError.system(operation: "open", path: path, errno: errno) }
        return fd
    }

    private func writeAll(_ fd: Int32, _ data: Data) throws {
        try data.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let written = write(fd, raw.baseAddress! + offset, raw.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    throw TimelineJournalError.system(operation: "write", path: path, errno: errno)
                }
                offset += written
            }
        }
    }
}
