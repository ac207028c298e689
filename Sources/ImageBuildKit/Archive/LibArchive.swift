import CArchive
import Foundation

/// An error reported by libarchive, with the archive it came from.
public struct ArchiveError: Error, CustomStringConvertible, Sendable {
    public let path: String
    public let message: String
    public var description: String { "\(path): \(message)" }
}

/// The kind of an archive entry, independent of libarchive's mode bits.
public enum EntryKind: Sendable, Equatable {
    case regular
    case directory
    case symlink(target: String)
    case hardlink(target: String)
    case characterDevice(major: UInt32, minor: UInt32)
    case blockDevice(major: UInt32, minor: UInt32)
    case fifo
    case socket
}

/// One header read from an archive.
public struct ArchiveEntryHeader: Sendable {
    public var path: String
    public var kind: EntryKind
    public var permissions: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var mtime: Int64
    public var size: Int64
}

/// Streams the entries of any archive format and compression libarchive reads
/// (tar, cpio, ar for .deb, zip; gzip, xz, zstd, bzip2...).
public final class ArchiveReader {
    private let handle: OpaquePointer
    public let path: String

    /// - Parameter name: what errors call the archive (default: `path`), e.g. `pkg.deb!data.tar.xz` for a
    ///   member spooled to a temporary file.
    public init(path: String, name: String? = nil) throws {
        let name = name ?? path
        handle = try Self.open(name: name) { archive_read_open_filename($0, path, 1 << 16) }
        self.path = name
    }

    /// A handle with every filter and format enabled and `open` done. On failure the handle is freed
    /// here and nothing else owns it: the initializers assign it only once it is open, so `deinit`
    /// (which runs for a class whose stored properties were all set) never frees a handle twice.
    private static func open(name: String, _ open: (OpaquePointer) -> Int32) throws -> OpaquePointer {
        guard let handle = archive_read_new() else {
            throw ArchiveError(path: name, message: "libarchive: out of memory")
        }
        archive_read_support_filter_all(handle)
        supportFormats(handle)
        if open(handle) != ib_archive_ok() {
            let message = errorString(handle)
            archive_read_free(handle)
            throw ArchiveError(path: name, message: message)
        }
        return handle
    }

    /// Every format `archive_read_support_format_all` enables but mtree. An mtree file describes files
    /// without holding them: libarchive gives each regular entry the size the text declares, filled with
    /// zeros, so forty bytes could make an extraction write terabytes (and an entry size near 2^63 made
    /// `inspect` overflow its total). No base, package or initramfs is one.
    private static func supportFormats(_ handle: OpaquePointer) {
        for support in [archive_read_support_format_ar, archive_read_support_format_cpio, archive_read_support_format_empty,
                        archive_read_support_format_lha, archive_read_support_format_tar, archive_read_support_format_xar,
                        archive_read_support_format_warc, archive_read_support_format_7zip, archive_read_support_format_cab,
                        archive_read_support_format_rar, archive_read_support_format_rar5, archive_read_support_format_iso9660,
                        archive_read_support_format_zip] {
            _ = support(handle)
        }
    }

    deinit { archive_read_free(handle) }

    static func errorString(_ handle: OpaquePointer) -> String {
        // libarchive fails some reads of a corrupt archive without a message (a header that declares a
        // size it cannot buffer, for one).
        guard let text = archive_error_string(handle).map({ String(cString: $0) }) else {
            return "corrupt or truncated archive (libarchive gave no reason)"
        }
        // Its messages about the file itself ("Failed to open '<path>'") repeat the path and keep the
        // reason in its errno.
        let code = archive_errno(handle)
        if code > 0, text.hasPrefix("Failed to open") { return "cannot open: \(String(cString: strerror(code)))" }
        if code > 0, text.hasPrefix("Error reading") { return "cannot read: \(String(cString: strerror(code)))" }
        return text
    }

    private var entries = 0

    /// The next entry's header, or nil at the end of the archive.
    public func next() throws -> ArchiveEntryHeader? {
        var entry: OpaquePointer?
        let status = archive_read_next_header(handle, &entry)
        if status == ib_archive_eof() {
            // libarchive reads an empty file (or empty compressed data) as an archive with no entries.
            if entries == 0, archive_format(handle) == ARCHIVE_FORMAT_EMPTY {
                throw ArchiveError(path: path, message: archive_filter_count(handle) > 1
                                   ? "not an archive: the compressed data is empty" : "not an archive: the file is empty")
            }
            return nil
        }
        if status < ib_archive_warn() || entry == nil {
            throw ArchiveError(path: path, message: Self.errorString(handle))
        }
        entries += 1
        let header = Self.header(from: entry!)
        if header.size < 0 {
            throw ArchiveError(path: path, message: "entry '\(header.path)' has a negative size (\(header.size)); the archive is corrupt")
        }
        return header
    }

    static func header(from entry: OpaquePointer) -> ArchiveEntryHeader {
        let name = archive_entry_pathname(entry).map { String(cString: $0) } ?? ""
        let type = UInt32(archive_entry_filetype(entry))
        let kind: EntryKind
        if let link = archive_entry_hardlink(entry) {
            kind = .hardlink(target: String(cString: link))
        } else {
            switch type & 0o170000 {
            case 0o040000: kind = .directory
            case 0o120000: kind = .symlink(target: archive_entry_symlink(entry).map { String(cString: $0) } ?? "")
            case 0o020000: kind = .characterDevice(major: UInt32(archive_entry_rdevmajor(entry)), minor: UInt32(archive_entry_rdevminor(entry)))
            case 0o060000: kind = .blockDevice(major: UInt32(archive_entry_rdevmajor(entry)), minor: UInt32(archive_entry_rdevminor(entry)))
            case 0o010000: kind = .fifo
            case 0o140000: kind = .socket
            default: kind = .regular
            }
        }
        return ArchiveEntryHeader(
            path: name, kind: kind,
            permissions: UInt32(archive_entry_perm(entry)) & 0o7777,
            uid: UInt32(truncatingIfNeeded: archive_entry_uid(entry)),
            gid: UInt32(truncatingIfNeeded: archive_entry_gid(entry)),
            mtime: Int64(archive_entry_mtime(entry)),
            size: Int64(archive_entry_size(entry)))
    }

    /// Streams the current entry's data in the blocks libarchive decodes.
    public func readData(_ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        var buffer: UnsafeRawPointer?
        var size = 0
        var offset: la_int64_t = 0
        var written: Int64 = 0
        while true {
            let status = archive_read_data_block(handle, &buffer, &size, &offset)
            if status == ib_archive_eof() { return }
            if status < ib_archive_warn() {
                throw ArchiveError(path: path, message: Self.errorString(handle))
            }
            // Sparse files: libarchive skips holes by advancing the offset.
            if Int64(offset) > written {
                let hole = [UInt8](repeating: 0, count: Int(Int64(offset) - written))
                try hole.withUnsafeBytes(body)
                written = Int64(offset)
            }
            if let buffer, size > 0 {
                try body(UnsafeRawBufferPointer(start: buffer, count: size))
                written += Int64(size)
            }
        }
    }

    /// The current entry's data, whole. Only for small members (control files, manifests).
    public func readAll(limit: Int = 64 << 20) throws -> Data {
        var data = Data()
        try readData { chunk in
            if data.count + chunk.count > limit {
                throw ArchiveError(path: path, message: "member larger than \(limit) bytes")
            }
            data.append(contentsOf: chunk)
        }
        return data
    }
}

/// The container format an `ArchiveWriter` produces.
public enum ArchiveFormat: Sendable {
    /// SVR4 "newc" cpio, the format the Linux kernel unpacks as an initramfs.
    case cpioNewc
    /// POSIX pax, restricted to ustar headers unless an entry needs more.
    case paxRestricted
}

/// Writes an archive entry by entry, handing the bytes to a sink. The sink does
/// the compression (parallel gzip, or a plain file), so libarchive writes no filter,
/// except xz for small archives made whole in memory (`Filter.xz`, node overlays).
public final class ArchiveWriter {
    /// What libarchive itself does to the bytes before the sink.
    public enum Filter: Sendable {
        case none
        /// liblzma at this preset (0-9): no time or name in the stream, so the same
        /// entries give the same bytes.
        case xz(preset: Int)
    }

    private let handle: OpaquePointer
    private let box: SinkBox
    private var closed = false

    final class SinkBox {
        let sink: (UnsafeRawBufferPointer) throws -> Void
        var error: Error?
        init(_ sink: @escaping (UnsafeRawBufferPointer) throws -> Void) { self.sink = sink }
    }

    public init(format: ArchiveFormat, filter: Filter = .none, sink: @escaping (UnsafeRawBufferPointer) throws -> Void) throws {
        guard let handle = archive_write_new() else {
            throw ArchiveError(path: "<writer>", message: "libarchive: out of memory")
        }
        self.handle = handle
        self.box = SinkBox(sink)
        switch format {
        case .cpioNewc: archive_write_set_format_cpio_newc(handle)
        case .paxRestricted: archive_write_set_format_pax_restricted(handle)
        }
        switch filter {
        case .none:
            archive_write_add_filter_none(handle)
        case .xz(let preset):
            guard archive_write_add_filter_xz(handle) == ib_archive_ok(),
                  archive_write_set_filter_option(handle, "xz", "compression-level", "\(preset)") == ib_archive_ok() else {
                let message = ArchiveReader.errorString(handle)
                archive_write_free(handle)
                throw ArchiveError(path: "<writer>", message: "xz: \(message)")
            }
        }
        // Buffer in 64 KiB blocks, but do not pad the last one: the output is
        // exactly the archive, so identical trees give identical bytes.
        archive_write_set_bytes_per_block(handle, 65536)
        archive_write_set_bytes_in_last_block(handle, 1)
        let status = archive_write_open2(
            handle, Unmanaged.passUnretained(box).toOpaque(), nil,
            { _, context, buffer, length in
                let box = Unmanaged<SinkBox>.fromOpaque(context!).takeUnretainedValue()
                do {
                    try box.sink(UnsafeRawBufferPointer(start: buffer, count: length))
                    return length
                } catch {
                    box.error = error
                    return -1
                }
            }, nil, nil)
        if status != ib_archive_ok() {
            let message = ArchiveReader.errorString(handle)
            archive_write_free(handle)
            throw ArchiveError(path: "<writer>", message: message)
        }
    }

    deinit {
        if !closed { archive_write_close(handle) }
        archive_write_free(handle)
    }

    private func check(_ status: Int32, _ what: String) throws {
        if status < ib_archive_warn() {
            if let error = box.error { throw error }
            throw ArchiveError(path: what, message: ArchiveReader.errorString(handle))
        }
    }

    /// Writes one entry. `inode` is given by the caller so that output does not
    /// depend on the build host's inode numbers.
    public func write(
        path: String, kind: EntryKind, permissions: UInt32, uid: UInt32, gid: UInt32,
        mtime: Int64, inode: Int64, size: Int64 = 0, nlink: UInt32 = 1,
        data: ((( UnsafeRawBufferPointer) throws -> Void) throws -> Void)? = nil
    ) throws {
        guard let entry = archive_entry_new() else {
            throw ArchiveError(path: path, message: "libarchive: out of memory")
        }
        defer { archive_entry_free(entry) }
        archive_entry_set_pathname(entry, path)
        var type: UInt32 = 0o100000
        var entrySize = size
        switch kind {
        case .regular: type = 0o100000
        case .directory: type = 0o040000; entrySize = 0
        case .symlink(let target):
            type = 0o120000; entrySize = 0
            archive_entry_set_symlink(entry, target)
        case .hardlink(let target):
            archive_entry_set_hardlink(entry, target); entrySize = 0
        case .characterDevice(let major, let minor):
            type = 0o020000; entrySize = 0
            archive_entry_set_rdevmajor(entry, dev_t(major)); archive_entry_set_rdevminor(entry, dev_t(minor))
        case .blockDevice(let major, let minor):
            type = 0o060000; entrySize = 0
            archive_entry_set_rdevmajor(entry, dev_t(major)); archive_entry_set_rdevminor(entry, dev_t(minor))
        case .fifo: type = 0o010000; entrySize = 0
        case .socket: type = 0o140000; entrySize = 0
        }
        if case .hardlink = kind {} else { archive_entry_set_filetype(entry, type) }
        archive_entry_set_perm(entry, mode_t(permissions & 0o7777))
        archive_entry_set_uid(entry, la_int64_t(uid))
        archive_entry_set_gid(entry, la_int64_t(gid))
        archive_entry_set_mtime(entry, time_t(mtime), 0)
        archive_entry_set_ino64(entry, la_int64_t(inode))
        archive_entry_set_dev(entry, 0)
        archive_entry_set_nlink(entry, UInt32(kind == .directory ? 2 : nlink))
        archive_entry_set_size(entry, la_int64_t(entrySize))
        try check(Self.inUTF8Locale { archive_write_header(handle, entry) }, path)
        if entrySize > 0, let data {
            var remaining = entrySize
            try data { chunk in
                guard chunk.count > 0 else { return }
                let n = archive_write_data(handle, chunk.baseAddress, chunk.count)
                if n < 0 {
                    if let error = box.error { throw error }
                    throw ArchiveError(path: path, message: ArchiveReader.errorString(handle))
                }
                remaining -= Int64(chunk.count)
            }
            if remaining != 0 {
                throw ArchiveError(path: path, message: "file changed size while it was archived (\(remaining) bytes off)")
            }
        }
        try check(archive_write_finish_entry(handle), path)
    }

    /// libarchive converts names from the calling thread's locale to UTF-8 for a
    /// pax header. In the C locale (a service, a CI job) a name with any byte over
    /// 0x7f fails that conversion and the header gets `hdrcharset=BINARY`, which
    /// busybox tar warns about on every node's console. Names in a root tree are
    /// UTF-8, so the header is written under C.UTF-8 for this thread only (the
    /// locale object is created once and never changed, so sharing it is safe).
    private nonisolated(unsafe) static let utf8Locale: locale_t? = newlocale(LC_CTYPE_MASK, "C.UTF-8", nil)

    private static func inUTF8Locale<T>(_ body: () -> T) -> T {
        guard let utf8Locale else { return body() }
        let previous = uselocale(utf8Locale)
        defer { uselocale(previous) }
        return body()
    }

    /// Writes the trailer and flushes the last block to the sink.
    public func close() throws {
        guard !closed else { return }
        closed = true
        try check(archive_write_close(handle), "<close>")
    }
}
