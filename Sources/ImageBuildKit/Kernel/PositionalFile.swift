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
        let (done, code) = result.withUnsafeMutableBytes { preadFully(fd, into: $0, offset: offset) }
        if code != 0 { throw Failure(call: "pread", code: code) }
        if done < wanted { result.removeLast(wanted - done) }
        return result
    }
}

/// Fills `buffer` from `descriptor` at `offset` with pread(2), retrying short reads and EINTR: the one
/// read loop the kernel and ELF readers and the boot server's file reads share.
/// - Returns: the bytes read (fewer than `buffer.count` when the file ended first) and the errno that
///   stopped the read early (0 if none).
public func preadFully(_ descriptor: Int32, into buffer: UnsafeMutableRawBufferPointer, offset: Int) -> (count: Int, errno: Int32) {
    var done = 0
    while done < buffer.count {
        let result = pread(descriptor, buffer.baseAddress! + done, buffer.count - done, off_t(offset + done))
        if result > 0 {
            done += result
        } else if result == 0 {
            break
        } else if errno != EINTR {
            return (done, errno)
        }
    }
    return (done, 0)
}
