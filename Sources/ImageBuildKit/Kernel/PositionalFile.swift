#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A read-only file read with `pread`, so header parsers fetch just the bytes
/// they need (an ELF header, a dynamic segment) instead of whole binaries.
///
/// Errors are reported as `errno` plus the failing call; each domain wraps them
/// into its own error enum with the path.
final class PositionalFile {
    struct Failure: Error {
        let call: String
        let code: Int32
        var message: String { "\(call): \(String(cString: strerror(code)))" }
    }

    let fd: Int32
    let size: Int

    init(path: String) throws(Failure) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Failure(call: "open", code: errno) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let code = errno
            close(fd)
            throw Failure(call: "fstat", code: code)
        }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            close(fd)
            throw Failure(call: "open", code: EISDIR)
        }
        self.fd = fd
        self.size = Int(st.st_size)
    }

    deinit { close(fd) }

    /// Up to `count` bytes at `offset`; fewer only at the end of the file.
    func read(at offset: Int, count: Int) throws(Failure) -> [UInt8] {
        guard offset >= 0, count > 0, offset < size else { return [] }
        let wanted = min(count, size - offset)
        var result = [UInt8](repeating: 0, count: wanted)
        var done = 0
        while done < wanted {
            let n = result.withUnsafeMutableBytes { raw in
                pread(fd, raw.baseAddress! + done, wanted - done, off_t(offset + done))
            }
            if n < 0 {
                if errno == EINTR { continue }
                throw Failure(call: "pread", code: errno)
            }
            if n == 0 { break }
            done += n
        }
        if done < wanted { result.removeLast(wanted - done) }
        return result
    }
}
