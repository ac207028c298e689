import BootProtocols
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging

/// One line of the lease journal.
///
/// Text, one record per line, so an administrator can read (and grep) it:
/// `C <time> <mac> <address> <expires> <hostname|-> <fnv1a32>` for a bound lease, `R` for a release,
/// `D` for a decline (`expires` is then the end of the set-aside). The checksum covers everything
/// before it, so a torn or garbled line is recognised and skipped rather than misread.
public struct LeaseRecord: Hashable, Sendable, CustomStringConvertible {
    public enum Kind: Character, Hashable, Sendable { case commit = "C", release = "R", decline = "D" }

    public var kind: Kind
    /// When the server decided (wall clock): the reference time for "who held what".
    public var time: DHCPTimestamp
    public var mac: MACAddress
    public var address: IPv4Address
    /// Lease end (commit), set-aside end (decline), unused (release: 0).
    public var expires: DHCPTimestamp
    public var hostname: String?

    public init(kind: Kind, time: DHCPTimestamp, mac: MACAddress, address: IPv4Address,
                expires: DHCPTimestamp = DHCPTimestamp(secondsSinceEpoch: 0), hostname: String? = nil) {
        self.kind = kind
        self.time = time
        self.mac = mac
        self.address = address
        self.expires = expires
        self.hostname = hostname
    }

    public var description: String {
        "\(kind.rawValue) \(time.secondsSinceEpoch) \(mac) \(address) \(expires.secondsSinceEpoch) \(hostname ?? "-")"
    }

    /// The journal line, newline included.
    var line: String {
        // Host names come from the validated inventory; anything that could break the framing is dropped.
        let name = hostname.flatMap { $0.isEmpty || $0.utf8.contains(where: { $0 <= 0x20 || $0 >= 0x7F }) ? nil : $0 }
        var body = "\(kind.rawValue) \(time.secondsSinceEpoch) \(mac) \(address) \(expires.secondsSinceEpoch) \(name ?? "-") "
        body += hex32(fnv1a(body.utf8))
        body += "\n"
        return body
    }

    /// Parses one line without its newline; nil when malformed or the checksum does not match.
    init?(line: Substring) {
        guard let lastSpace = line.lastIndex(of: " ") else { return nil }
        let body = line[...lastSpace]
        guard let sum = UInt32(line[line.index(after: lastSpace)...], radix: 16), sum == fnv1a(body.utf8) else { return nil }
        let fields = body.split(separator: " ")
        guard fields.count == 6, fields[0].count == 1, let kind = Kind(rawValue: fields[0].first!),
              let time = Int64(fields[1]), let mac = MACAddress(fields[2]), let address = IPv4Address(fields[3]),
              let expires = Int64(fields[4]) else { return nil }
        self.init(kind: kind, time: DHCPTimestamp(secondsSinceEpoch: time), mac: mac, address: address,
                  expires: DHCPTimestamp(secondsSinceEpoch: expires), hostname: fields[5] == "-" ? nil : String(fields[5]))
    }
}

/// What reading a journal found.
public struct LeaseJournalContents: Sendable {
    public var records: [LeaseRecord] = []
    /// Bytes after the last complete line (a write cut short by a crash); ignored.
    public var tornBytes = 0
    /// Complete lines that did not parse or failed their checksum; skipped.
    public var corruptLines = 0
    /// Length of the good prefix (where appending resumes).
    public var validLength = 0

    /// Reads a journal file; a missing file reads as empty.
    public static func read(path: String) throws(LeaseStoreError) -> LeaseJournalContents {
        var contents = LeaseJournalContents()
        guard FileManager.default.fileExists(atPath: path) else { return contents }
        guard let data = FileManager.default.contents(atPath: path) else { throw .io("read", path, errno) }
        let bytes = [UInt8](data)
        var start = 0
        while start < bytes.count {
            guard let newline = bytes[start...].firstIndex(of: 0x0A) else {
                contents.tornBytes = bytes.count - start
                break
            }
            let line = String(decoding: bytes[start..<newline], as: UTF8.self)
            if !line.hasPrefix("#") && !line.isEmpty {
                if let record = LeaseRecord(line: Substring(line)) {
                    contents.records.append(record)
                } else {
                    contents.corruptLines += 1
                }
            }
            start = newline + 1
            contents.validLength = start
        }
        return contents
    }
}

/// Why the lease store could not do something.
public enum LeaseStoreError: Error, Hashable, Sendable, CustomStringConvertible {
    case io(String, String, Int32)
    /// Refused: the address is bound or offered to another client (the invariant the store guards).
    case addressHeldByAnother(IPv4Address, holder: MACAddress, requester: MACAddress)
    case closed

    public var description: String {
        switch self {
        case .io(let operation, let path, let code):
            "lease journal: \(operation) \(path) failed: \(String(cString: strerror(code))) (errno \(code))"
        case .addressHeldByAnother(let address, let holder, let requester):
            "refusing to bind \(address) to \(requester): held by \(holder)"
        case .closed: "lease journal is closed"
        }
    }
}

/// Counters of the journal writer, for tests and metrics.
public struct LeaseJournalStatistics: Sendable, Hashable {
    public var recordsWritten = 0
    /// fdatasync calls for appended records; with group commit, fewer than records under load.
    public var syncs = 0
    public var compactions = 0
    public var failedWrites = 0
}

/// The append-only file behind the lease store, written by one dedicated thread.
///
/// Group commit: callers enqueue records; the thread takes everything queued, writes it with one
/// `write`, calls `fdatasync` once, then runs every record's completion. Whatever arrives during a
/// sync forms the next batch, so under load one sync covers many ACKs and the event loop never blocks
/// on the disk. Compaction runs on the same thread, in queue order: write the live set aside, fsync,
/// rename over the journal, fsync the directory, continue appending to the new file.
final class LeaseJournal: @unchecked Sendable {
    typealias Completion = @Sendable (Result<Void, LeaseStoreError>) -> Void

    private enum Operation {
        case append([UInt8], Completion?)
        case compact([UInt8])
    }

    static let header = "# imagebuild DHCP lease journal v1: kind time mac address expires hostname checksum\n"

    let path: String
    let directory: String
    private let logger: Logger
    private let beforeSync: (@Sendable (Int) -> Void)?
    private let condition = NSCondition()
    private var queue: [Operation] = []
    private var stopping = false
    private var stopped = false
    private var stats = LeaseJournalStatistics()
    private var fd: Int32
    private var thread: Thread?

    /// Opens (creating if needed) the journal, cut back to `validLength` so new records never follow a torn one.
    init(directory: String, fileName: String, validLength: Int, logger: Logger,
         beforeSync: (@Sendable (Int) -> Void)?) throws(LeaseStoreError) {
        self.directory = directory
        self.path = directory + "/" + fileName
        self.logger = logger
        self.beforeSync = beforeSync
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw .io("create directory", directory, errno == 0 ? EIO : errno)
        }
        let existed = FileManager.default.fileExists(atPath: path)
        fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
        guard fd >= 0 else { throw .io("open", path, errno) }
        if existed && validLength > 0 {
            guard ftruncate(fd, off_t(validLength)) == 0 else { throw .io("truncate", path, errno) }
        } else {
            guard ftruncate(fd, 0) == 0 else { throw .io("truncate", path, errno) }
            guard LeaseJournal.writeAll(fd, Array(LeaseJournal.header.utf8)) == 0, fsync(fd) == 0 else {
                throw .io("write", path, errno)
            }
            LeaseJournal.syncDirectory(directory)
        }
        // The thread holds the journal until `close()`.
        let thread = Thread { self.writerLoop() }
        thread.name = "dhcp-lease-journal"
        self.thread = thread
        thread.start()
    }

    deinit {
        if fd >= 0 { Glibc.close(fd) }
    }

    var statistics: LeaseJournalStatistics {
        condition.lock()
        defer { condition.unlock() }
        return stats
    }

    func append(_ record: LeaseRecord, completion: Completion?) {
        let bytes = Array(record.line.utf8)
        condition.lock()
        if stopping {
            condition.unlock()
            completion?(.failure(.closed))
            return
        }
        queue.append(.append(bytes, completion))
        condition.signal()
        condition.unlock()
    }

    /// Replaces the journal with `records` (the live set) once everything queued before is written.
    func compact(_ records: [LeaseRecord]) {
        var text = LeaseJournal.header
        for record in records { text += record.line }
        condition.lock()
        if !stopping {
            queue.append(.compact(Array(text.utf8)))
            condition.signal()
        }
        condition.unlock()
    }

    /// Writes what is queued, then stops the thread. Blocks until it has.
    func shutdown() {
        condition.lock()
        stopping = true
        condition.signal()
        while !stopped { condition.wait() }
        condition.unlock()
    }

    private func writerLoop() {
        var pending: [UInt8] = []
        var completions: [Completion] = []
        pending.reserveCapacity(64 << 10)
        while true {
            condition.lock()
            while queue.isEmpty && !stopping { condition.wait() }
            let batch = queue
            queue.removeAll(keepingCapacity: true)
            let finish = stopping && batch.isEmpty
            condition.unlock()
            if finish { break }

            var records = 0
            for operation in batch {
                switch operation {
                case .append(let bytes, let completion):
                    pending.append(contentsOf: bytes)
                    if let completion { completions.append(completion) }
                    records += 1
                case .compact(let contents):
                    flush(&pending, &completions, records: records)
                    records = 0
                    compactNow(contents)
                }
            }
            flush(&pending, &completions, records: records)
        }
        condition.lock()
        stopped = true
        condition.broadcast()
        condition.unlock()
    }

    private func flush(_ pending: inout [UInt8], _ completions: inout [Completion], records: Int) {
        guard !pending.isEmpty else { return }
        beforeSync?(records)
        var result: Result<Void, LeaseStoreError> = .success(())
        if LeaseJournal.writeAll(fd, pending) != 0 {
            result = .failure(.io("write", path, errno))
        } else if fdatasync(fd) != 0 {
            result = .failure(.io("fdatasync", path, errno))
        }
        condition.lock()
        stats.syncs += 1
        if case .success = result { stats.recordsWritten += records } else { stats.failedWrites += records }
        condition.unlock()
        if case .failure(let error) = result {
            logger.error("lease journal write failed; the affected replies are not sent", metadata: ["error": "\(error)"])
        }
        for completion in completions { completion(result) }
        pending.removeAll(keepingCapacity: true)
        completions.removeAll(keepingCapacity: true)
    }

    private func compactNow(_ contents: [UInt8]) {
        let temporary = path + ".compact"
        let tfd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640)
        guard tfd >= 0 else {
            logger.error("lease journal compaction failed", metadata: ["error": "\(LeaseStoreError.io("open", temporary, errno))"])
            return
        }
        guard LeaseJournal.writeAll(tfd, contents) == 0, fsync(tfd) == 0 else {
            let code = errno
            Glibc.close(tfd)
            unlink(temporary)
            logger.error("lease journal compaction failed", metadata: ["error": "\(LeaseStoreError.io("write", temporary, code))"])
            return
        }
        Glibc.close(tfd)
        guard rename(temporary, path) == 0 else {
            logger.error("lease journal compaction failed", metadata: ["error": "\(LeaseStoreError.io("rename", temporary, errno))"])
            unlink(temporary)
            return
        }
        LeaseJournal.syncDirectory(directory)
        let newFD = open(path, O_WRONLY | O_APPEND | O_CLOEXEC)
        if newFD >= 0 {
            Glibc.close(fd)
            fd = newFD
        } else {
            // The old descriptor now points at an unlinked file: appends there would be lost.
            logger.critical("cannot reopen the compacted lease journal", metadata: ["error": "\(LeaseStoreError.io("open", path, errno))"])
        }
        condition.lock()
        stats.compactions += 1
        condition.unlock()
    }

    /// 0 on success, -1 with errno set.
    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Int32 {
        bytes.withUnsafeBytes { raw -> Int32 in
            var offset = 0
            while offset < raw.count {
                let n = write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    return -1
                }
                offset += n
            }
            return 0
        }
    }

    static func syncDirectory(_ directory: String) {
        let dfd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dfd >= 0 else { return }
        fsync(dfd)
        Glibc.close(dfd)
    }
}

func fnv1a(_ bytes: some Sequence<UInt8>) -> UInt32 {
    var hash: UInt32 = 0x811C_9DC5
    for byte in bytes {
        hash ^= UInt32(byte)
        hash = hash &* 0x0100_0193
    }
    return hash
}

private func hex32(_ value: UInt32) -> String {
    let s = String(value, radix: 16)
    return String(repeating: "0", count: 8 - s.count) + s
}
