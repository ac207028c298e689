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
        let outFile = NSTemporaryDirectory() + "ib-out-\(UUID().uuidString)"
        let errFile = outFile + ".err"
        defer { unlink(outFile); unlink(errFile) }
        let child = try ChildProcess(executable, arguments, environment: environment, directory: directory, stdout: outFile, stderr: errFile)
        let deadline = Date().addingTimeInterval(timeout)
        while child.isRunning && Date() < deadline { usleep(10_000) }
        if child.isRunning { child.kill(SIGKILL) }
        let status = child.wait()
        return Result(status: status,
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

    /// Runs a blocking test body (child processes reaped by polling, `usleep` waits for a VM's console)
    /// on a thread of its own. Swift Testing runs synchronous tests on the cooperative pool, one thread
    /// per core: a four-VM boot polling there for a minute or more, next to another synchronous test,
    /// can starve every async test in the process, whose sleeps and time-outs then run late (the DHCP
    /// crash test, whose kill must land inside its 6 s load loop, failed once that way, by all signs).
    static func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            let thread = Thread { continuation.resume(with: Swift.Result { try body() }) }
            thread.stackSize = 8 << 20
            thread.start()
        }
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

/// A child process started with posix_spawn and reaped with waitpid: no
/// dependence on Foundation's child monitoring, which can miss an exit when
/// many children come and go.
final class ChildProcess: @unchecked Sendable {
    let pid: pid_t
    private let lock = NSLock()
    private var exitStatus: Int32?

    init(_ executable: String, _ arguments: [String], environment: [String: String] = [:], directory: String? = nil,
         stdout: String, stderr: String) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdout, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        // NIO opens its sockets without CLOEXEC. A child that inherits a server's accepted socket keeps
        // the connection open after the server closes it (no FIN while the child lives), which is how a
        // QEMU or `imagebuild serve` started by one test broke another test's time-out check.
        // (glibc 2.34+; Swift's Glibc module does not export it, so it is looked up by name.)
        guard let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") else {
            throw HarnessError("this libc has no posix_spawn_file_actions_addclosefrom_np")
        }
        let addCloseFrom = unsafeBitCast(symbol, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, CInt) -> CInt).self)
        guard addCloseFrom(&actions, 3) == 0 else { throw HarnessError("posix_spawn_file_actions_addclosefrom_np failed") }
        var env = ProcessInfo.processInfo.environment
        env.merge(environment) { $1 }
        // posix_spawn has no portable chdir action: a directory is entered by a shell first.
        let command = directory.map { ["/bin/sh", "-c", "cd \"$0\" && exec \"$@\"", $0, executable] + arguments } ?? [executable] + arguments
        let argv = command.map { strdup($0) } + [nil]
        let envp = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { argv.forEach { free($0) }; envp.forEach { free($0) } }
        var pid = pid_t()
        let rc = posix_spawn(&pid, command[0], &actions, nil, argv, envp)
        guard rc == 0 else { throw HarnessError("cannot start \(executable): \(String(cString: strerror(rc)))") }
        self.pid = pid
    }

    /// Non-blocking check; reaps the child when it has exited.
    var isRunning: Bool {
        lock.lock(); defer { lock.unlock() }
        if exitStatus != nil { return false }
        var status: Int32 = 0
        let result = waitpid(pid, &status, WNOHANG)
        if result == pid { exitStatus = Self.decode(status); return false }
        return result == 0
    }

    func kill(_ signal: Int32) { if isRunning { _ = Glibc.kill(pid, signal) } }

    @discardableResult
    func wait() -> Int32 {
        lock.lock(); defer { lock.unlock() }
        if let exitStatus { return exitStatus }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        exitStatus = Self.decode(status)
        return exitStatus!
    }

    var terminationStatus: Int32 { wait() }

    static func decode(_ status: Int32) -> Int32 {
        (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }
}

/// A process started in the background and stopped by its PID when released.
final class BackgroundProcess {
    let process: ChildProcess
    let logPath: String

    init(_ executable: String, _ arguments: [String], log: String, environment: [String: String] = [:]) throws {
        logPath = log
        FileManager.default.createFile(atPath: log, contents: nil)
        process = try ChildProcess(executable, arguments, environment: environment, stdout: log, stderr: log)
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
    var isRunning: Bool { process.isRunning }

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
        process.kill(SIGTERM)
        let deadline = Date().addingTimeInterval(5)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning { process.kill(SIGKILL) }
        process.wait()
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
