#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// The one encoder of response heads the fast path writes itself (`FastPath`): a file's 200 and a
/// fast route's answer. Heads are encoded as NIO's HTTP/1 encoder writes them (status line, then
/// `name: value` lines), without `Server` and `Date`, which `ResponseHead.Trailer` adds per response
/// with the blank line.
enum ResponseHead {
    static func encode(_ status: HTTPResponse.Status, _ fields: HTTPFields, into buffer: inout ByteBuffer) {
        buffer.writeString("HTTP/1.1 \(status.code) \(status.reasonPhrase)\r\n")
        for field in fields where field.name != .date && field.name != .server {
            buffer.writeString(field.name.rawName)
            buffer.writeString(": ")
            buffer.writeString(field.value)
            buffer.writeString("\r\n")
        }
    }

    static func encode(_ status: HTTPResponse.Status, _ fields: HTTPFields) -> ByteBuffer {
        var buffer = ByteBuffer()
        encode(status, fields, into: &buffer)
        return buffer
    }

    // MARK: Files

    /// Content types by file extension beyond Hummingbird's table: boot files mostly have none it knows.
    static let mediaTypes: [MediaType.FileExtension: MediaType] = [
        "ipxe": MediaType(type: .text, subType: "plain", parameter: ("charset", "utf-8")),
        "cfg": MediaType(type: .text, subType: "plain", parameter: ("charset", "utf-8")),
        "img": .applicationBinary, "efi": .applicationBinary, "kpxe": .applicationBinary, "0": .applicationBinary,
        "c32": .applicationBinary, "squashfs": .applicationBinary,
    ]

    /// The headers of a 200 answer to a plain GET of one version of a file: what `FileMiddleware`
    /// (with `mediaTypes`) and `StaticFileGuard` answer, so a request gets the same head whichever path
    /// answers it (the live tests compare the two).
    static func fileFields(path: String, version: BootFileVersion) -> HTTPFields {
        var fields = HTTPFields()
        let date = version.modificationDate
        fields[.contentLength] = String(version.size)
        fields[.lastModified] = HTTPDate.format(Int(date.timeIntervalSince1970.rounded(.down)))
        fields[.eTag] = eTag(modified: date, size: Int(version.size))
        fields[.acceptRanges] = "bytes"
        fields[.contentType] = contentType(for: path)
        return fields
    }

    /// A file's 200 head (see `fileFields`); `path` as requested, with its leading '/'.
    static func file(path: String, version: BootFileVersion) -> ByteBuffer {
        encode(.ok, fileFields(path: path, version: version))
    }

    /// The extension is what follows the path's last '.', as `FileMiddleware` reads it.
    static func contentType(for path: String) -> String {
        if let dot = path.lastIndex(of: ".") {
            let ext = MediaType.FileExtension(String(path[path.index(after: dot)...]))
            if let type = mediaTypes[ext] ?? MediaType.getMediaType(forExtension: ext) { return type.description }
        }
        return fallbackContentType(for: path)
    }

    /// For a path whose extension names no type (`vmlinuz`, `pxelinux.cfg/01-…`).
    static func fallbackContentType(for path: String) -> String {
        if path.contains("/pxelinux.cfg/") || path.hasSuffix(".ipxe") || path.hasSuffix(".cfg") { return "text/plain; charset=utf-8" }
        return "application/octet-stream"
    }

    /// `FileMiddleware`'s weak ETag: the modification time and size, folded into 16 bytes by XOR.
    static func eTag(modified: Date, size: Int) -> String {
        let text = "\(modified.timeIntervalSince1970)-\(size)"
        var folded = [UInt8](repeating: 0, count: 16)
        for (index, byte) in text.utf8.enumerated() { folded[index % 16] ^= byte }
        let hex = Array("0123456789abcdef".utf8)
        var digits: [UInt8] = []
        digits.reserveCapacity(32)
        for byte in folded {
            digits.append(hex[Int(byte >> 4)])
            digits.append(hex[Int(byte & 0x0f)])
        }
        return "W/\"\(String(decoding: digits, as: UTF8.self))\""
    }

    // MARK: Per response

    /// The `Server` and `Date` lines and the blank line that ends a head, encoded once per second.
    struct Trailer {
        private var date = HTTPDate()
        private var encodedSecond = -1
        private var bytes = ByteBuffer()
        let server: String?

        init(server: String?) {
            self.server = server
        }

        mutating func now(allocator: ByteBufferAllocator) -> ByteBuffer {
            let text = date.now()
            if date.second != encodedSecond {
                encodedSecond = date.second
                bytes = allocator.buffer(capacity: 64)
                if let server { bytes.writeString("server: \(server)\r\n") }
                bytes.writeString("date: \(text)\r\n\r\n")
            }
            return bytes
        }
    }
}

/// The `Date` header's value, formatted once per second (RFC 9110 §5.6.7 IMF-fixdate).
struct HTTPDate {
    /// The second `now()` last formatted (callers that cache more per second compare it).
    private(set) var second = 0
    private var text = ""

    mutating func now() -> String {
        var clock = timespec()
        clock_gettime(CLOCK_REALTIME, &clock)
        if clock.tv_sec != second || text.isEmpty {
            second = clock.tv_sec
            text = Self.format(second)
        }
        return text
    }

    static func format(_ seconds: Int) -> String {
        var time = time_t(seconds)
        var parts = tm()
        gmtime_r(&time, &parts)
        let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        return "\(days[Int(parts.tm_wday)]), \(two(parts.tm_mday)) \(months[Int(parts.tm_mon)]) \(parts.tm_year + 1900) "
            + "\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)) GMT"
    }
}
