import Foundation
import TestSupport

/// Temporary directories and small process helpers for the kernel, module
/// and ELF tests. Everything is created under the system temporary directory.
enum KmodTestSupport {
    /// A fresh directory, removed when `body` returns.
    static func withTemporaryDirectory<T>(_ body: (URL) throws -> T) throws -> T {
        let url = FileManager.default.temporaryDirectory
            .appendingPathComponent("imagebuild-kmod-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: url) }
        return try body(url)
    }

    static func write(_ bytes: [UInt8], to url: URL) throws {
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data(bytes).write(to: url)
    }

    static func write(_ text: String, to url: URL) throws {
        try write(Array(text.utf8), to: url)
    }

    static func symlink(_ url: URL, to target: String) throws {
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: url.path, withDestinationPath: target)
    }

    /// Runs a program and returns its standard output; nil if it cannot run
    /// or exits non-zero.
    static func run(_ executable: String, _ arguments: [String]) -> String? {
        guard FileManager.default.isExecutableFile(atPath: executable),
              let result = try? ProcessRunner.run(executable, arguments, timeout: 300), result.status == 0 else { return nil }
        return result.stdout
    }

    /// A Unix `ar` archive as dpkg writes it (a .deb is one).
    static func arArchive(_ members: [(name: String, data: [UInt8])]) -> [UInt8] {
        var out = Array("!<arch>\n".utf8)
        func field(_ s: String, _ width: Int) -> [UInt8] {
            Array((s + String(repeating: " ", count: max(0, width - s.count))).utf8.prefix(width))
        }
        for member in members {
            out += field(member.name, 16) + field("0", 12) + field("0", 6) + field("0", 6)
                + field("100644", 8) + field(String(member.data.count), 10) + Array("`\n".utf8)
            out += member.data
            if member.data.count % 2 == 1 { out.append(0x0A) }
        }
        return out
    }
}
