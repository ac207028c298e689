import Glibc
import NIOCore

/// Reads `count` bytes at `offset` of an open file into a new buffer with pread(2), retrying short reads
/// and EINTR. TFTP's whole-file cache and HTTP's streamed chunks both read this way.
/// - Returns: the buffer (shorter than `count` when the file ended first) and the errno that stopped it (0 if none).
func preadBuffer(_ descriptor: CInt, offset: Int, count: Int) -> (buffer: ByteBuffer, errno: CInt) {
    var buffer = ByteBufferAllocator().buffer(capacity: count)
    var failure: CInt = 0
    buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { pointer -> Int in
        var done = 0
        while done < count {
            let result = pread(descriptor, pointer.baseAddress! + done, count - done, off_t(offset + done))
            if result > 0 {
                done += result
            } else if result == 0 {
                break
            } else if errno != EINTR {
                failure = errno
                break
            }
        }
        return done
    }
    return (buffer, failure)
}

/// A read of a served file that came back short (the file shrank) or failed.
struct FileReadError: Error, CustomStringConvertible {
    var path: String
    var offset: Int
    var message: String
    var description: String { "reading '\(path)' at \(offset): \(message)" }
}
