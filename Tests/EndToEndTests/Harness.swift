import Foundation
import TestSupport
import Testing

/// Shared plumbing for tests that run the real `imagebuild` binary and real
/// clients (QEMU, busybox httpd, cpio, bsdtar).
enum Harness {
    /// The package root (for recipes/).
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    /// The `imagebuild` binary SwiftPM built next to this test bundle.
    static let binary: String = {
        if let explicit = ProcessInfo.processInfo.environment["IMAGEBUILD_BIN"] { return explicit }
        let bundleDir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
        for candidate in [bundleDir + "/imagebuild", packageRoot + "/.build/debug/imagebuild"]
        where FileManager.default.isExecutableFile(atPath: candidate) {
            return candidate
        }
        return packageRoot + "/.build/debug/imagebuild"
    }()

    typealias Result = ProcessResult

    /// Runs a program to completion, bounded by `timeout` seconds (then SIGKILL).
    @discardableResult
    static func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:],
                    directory: String? = nil, timeout: Double = 600) throws -> Result {
        try ProcessRunner.run(executable, arguments, environment: environment, directory: directory, timeout: timeout)
    }

    @discardableResult
    static func imagebuild(_ arguments: [String], environment: [String: String] = [:], timeout: Double = 900) throws -> Result {
        try run(binary, arguments, environment: environment, timeout: timeout)
    }

    @discardableResult
    static func shell(_ command: String, timeout: Double = 120) throws -> Result {
        try run("/bin/sh", ["-c", command], timeout: timeout)
    }

    /// Runs a blocking test body on a thread of its own (`ProcessRunner.onOwnThread`: why).
    static func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await ProcessRunner.onOwnThread(body)
    }

    static func temporaryDirectory(_ name: String) -> String {
        var bytes = Array((NSTemporaryDirectory() + "ib-\(name).XXXXXX").utf8CString)
        return bytes.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }

    static func have(_ tool: String) -> Bool { ProcessRunner.which(tool) != nil }

    /// A fixed epoch so every build in the suite is comparable byte for byte.
    static let epoch = "1700000000"

    /// artifacts/minimal built once for the whole suite (it takes a few seconds).
    static let minimal: Swift.Result<String, HarnessError> = {
        let out = temporaryDirectory("minimal")
        guard let result = try? imagebuild([packageRoot + "/recipes/minimal.yaml", "--out", out],
                                           environment: ["SOURCE_DATE_EPOCH": epoch]) else {
            return .failure(HarnessError("could not run \(binary)"))
        }
        guard result.status == 0 else { return .failure(HarnessError("build failed: \(result.stderr)")) }
        return .success(out + "/minimal")
    }()
}

struct HarnessError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A static HTTP server on loopback (busybox httpd), serving `root`.
final class LoopbackHTTPServer {
    let port: Int
    let server: BackgroundProcess

    init(root: String) throws {
        var lastError: Error = HarnessError("no free port")
        for _ in 0..<20 {
            let port = Int.random(in: 20_000...60_000)
            do {
                let process = try BackgroundProcess("/bin/busybox", ["httpd", "-f", "-vv", "-p", "127.0.0.1:\(port)", "-h", root],
                                                    log: NSTemporaryDirectory() + "ib-httpd-\(port).log")
                usleep(300_000)
                if process.isRunning {
                    self.port = port
                    self.server = process
                    return
                }
                lastError = HarnessError("httpd exited: \(process.log)")
            } catch { lastError = error }
        }
        throw lastError
    }
}
