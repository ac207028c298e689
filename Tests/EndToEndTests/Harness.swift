import Foundation
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

    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    /// Runs a program to completion, bounded by `timeout` seconds (then SIGKILL).
    @discardableResult
    static func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:],
                    directory: String? = nil, timeout: Double = 600) throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        env.merge(environment) { $1 }
        process.environment = env
        if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
        let outFile = NSTemporaryDirectory() + "ib-out-\(UUID().uuidString)"
        let errFile = outFile + ".err"
        FileManager.default.createFile(atPath: outFile, contents: nil)
        FileManager.default.createFile(atPath: errFile, contents: nil)
        defer { unlink(outFile); unlink(errFile) }
        process.standardOutput = FileHandle(forWritingAtPath: outFile)
        process.standardError = FileHandle(forWritingAtPath: errFile)
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
        process.waitUntilExit()
        return Result(status: process.terminationStatus,
                      stdout: (try? String(contentsOfFile: outFile, encoding: .utf8)) ?? "",
                      stderr: (try? String(contentsOfFile: errFile, encoding: .utf8)) ?? "")
    }

    @discardableResult
    static func imagebuild(_ arguments: [String], environment: [String: String] = [:], timeout: Double = 900) throws -> Result {
        try run(binary, arguments, environment: environment, timeout: timeout)
    }

    @discardableResult
    static func shell(_ command: String, timeout: Double = 120) throws -> Result {
        try run("/bin/sh", ["-c", command], timeout: timeout)
    }

    static func temporaryDirectory(_ name: String) -> String {
        var bytes = Array((NSTemporaryDirectory() + "ib-\(name).XXXXXX").utf8CString)
        return bytes.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }

    static func have(_ tool: String) -> Bool {
        (try? shell("command -v \(tool) >/dev/null 2>&1").status) == 0
    }

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

/// A process started in the background and stopped by its PID when released.
final class BackgroundProcess {
    let process = Process()
    let logPath: String

    init(_ executable: String, _ arguments: [String], log: String) throws {
        logPath = log
        FileManager.default.createFile(atPath: log, contents: nil)
        let handle = FileHandle(forWritingAtPath: log)
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Waits until the log contains `pattern` (true) or the process exits / time runs out (false).
    func wait(for pattern: String, timeout: Double) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if log.contains(pattern) { return true }
            if !process.isRunning { return log.contains(pattern) }
            usleep(200_000)
        }
        return false
    }

    func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGTERM)
        let deadline = Date().addingTimeInterval(5)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    deinit { stop() }
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
                if process.process.isRunning {
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
