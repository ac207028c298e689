import CArchive
import Foundation

/// File-system steps that keep artifacts and boot roots whole: write aside,
/// fsync, then swap into place, so a killed build or publish never leaves a
/// half-written tree where nodes or users look.
public enum SafeFileSystem {
    /// Makes `staged` appear at `destination` in one step. If `destination`
    /// exists, the two are exchanged atomically (renameat2 RENAME_EXCHANGE) and
    /// the old tree is returned at `staged`'s path for the caller to remove.
    /// - Returns: true when an old tree was swapped out to `staged`.
    @discardableResult
    public static func swapInto(_ staged: String, destination: String) throws -> Bool {
        if rename(staged, destination) == 0 { return false }
        guard errno == EEXIST || errno == ENOTEMPTY || errno == EISDIR || errno == ENOTDIR else {
            throw RootfsError.system(operation: "rename to", path: destination, errno: errno)
        }
        if ib_rename_exchange(staged, destination) != 0 {
            throw RootfsError.system(operation: "exchange with", path: destination, errno: errno)
        }
        fsyncDirectory((destination as NSString).deletingLastPathComponent)
        return true
    }

    public static func fsyncDirectory(_ path: String) {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd >= 0 { fsync(fd); close(fd) }
    }

    /// Writes `bytes` to a new file (mode 0644) with plain open/write/close: Foundation's `Data.write`
    /// fsyncs every file, 40,000 journal commits for a 10,000-node generation that one
    /// `syncFileSystem` flushes at once.
    public static func writeFile(_ path: String, _ bytes: some Collection<UInt8>) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        if fd < 0 { throw RootfsError.system(operation: "create", path: path, errno: errno) }
        defer { close(fd) }
        if let failed = writeAll(fd, bytes) { throw RootfsError.system(operation: "write", path: path, errno: failed) }
    }

    /// Writes all of `bytes` to `fd`, again after short writes and EINTR; the errno of a failed
    /// write, or nil. The one write loop of the journals and files this project writes itself.
    public static func writeAll(_ fd: Int32, _ bytes: some Collection<UInt8>) -> Int32? {
        Array(bytes).withUnsafeBytes { buffer -> Int32? in
            var offset = 0
            while offset < buffer.count {
                let n = write(fd, buffer.baseAddress! + offset, buffer.count - offset)
                if n < 0 { if errno == EINTR { continue }; return errno }
                offset += n
            }
            return nil
        }
    }

    /// Flushes the whole file system holding `path` (syncfs(2)), and waits for it: one call where a
    /// generation of 10,000 nodes would need 40,000 fsyncs, each a journal commit of its own.
    public static func syncFileSystem(containing path: String) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { throw RootfsError.system(operation: "open", path: path, errno: errno) }
        defer { close(fd) }
        if ib_syncfs(fd) != 0 { throw RootfsError.system(operation: "syncfs", path: path, errno: errno) }
    }

    public static func fsyncFile(_ path: String) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { throw RootfsError.system(operation: "open", path: path, errno: errno) }
        defer { close(fd) }
        if fsync(fd) != 0 { throw RootfsError.system(operation: "fsync", path: path, errno: errno) }
    }

    /// Removes a tree that may still hold mounts from an interrupted `run:`
    /// step: unmounts first (deepest first), then deletes without crossing
    /// into any other file system, so a left-over bind of /dev can never cost
    /// the host its device nodes.
    public static func removeTree(_ path: String) throws {
        guard FileManager.default.fileExists(atPath: path) else { return }
        let prefix = URL(fileURLWithPath: path).standardizedFileURL.path + "/"
        if let mounts = try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8) {
            let points = mounts.split(separator: "\n").compactMap { line -> String? in
                let fields = line.split(separator: " ")
                guard fields.count > 1 else { return nil }
                let point = String(fields[1]).replacingOccurrences(of: "\\040", with: " ")
                return point.hasPrefix(prefix) ? point : nil
            }
            for point in points.sorted(by: { $0.count > $1.count }) {
                _ = try? Tool.run(["umount", "-l", point])
            }
        }
        try Tool.run(["rm", "-rf", "--one-file-system", path])
    }
}
