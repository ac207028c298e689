import Foundation

/// A file written with plain `write(2)`: the temporary spool for a package's
/// data member (unlinked when released), or the destination of an extracted image.
final class SpoolFile {
    let path: String
    private let fd: Int32
    private let temporary: Bool
    private var closed = false

    /// A new temporary file, removed on deinit.
    init() throws(PositionalFile.Failure) {
        var template = Array((NSTemporaryDirectory() + "/imagebuild-deb-XXXXXX").utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { throw PositionalFile.Failure(call: "mkstemp", code: errno) }
        self.fd = fd
        self.path = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        self.temporary = true
    }

    init(creating url: URL) throws(PositionalFile.Failure) {
        let fd = open(url.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw PositionalFile.Failure(call: "open", code: errno) }
        self.fd = fd
        self.path = url.path
        self.temporary = false
    }

    deinit {
        if !closed { close(fd) }
        if temporary { unlink(path) }
    }

    func write(_ chunk: UnsafeRawBufferPointer) throws(PositionalFile.Failure) {
        var done = 0
        while done < chunk.count {
            let n = Foundation.write(fd, chunk.baseAddress! + done, chunk.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw PositionalFile.Failure(call: "write", code: errno)
            }
            done += n
        }
    }

    func finish() throws(PositionalFile.Failure) {
        closed = true
        if close(fd) != 0 { throw PositionalFile.Failure(call: "close", code: errno) }
    }
}
