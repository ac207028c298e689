import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// What a finished command left: its exit status (128 + signal when a signal ended it) and its output.
public struct ProcessResult: Sendable {
    public var status: Int32
    public var stdoutData: Data
    public var stderr: String
    /// The command ran past its time-out and was killed (SIGKILL).
    public var timedOut: Bool

    public init(status: Int32, stdoutData: Data, stderr: String, timedOut: Bool = false) {
        self.status = status
        self.stdoutData = stdoutData
        self.stderr = stderr
        self.timedOut = timedOut
    }

    public var stdout: String { String(decoding: stdoutData, as: UTF8.self) }
    /// Standard output, then standard error: for messages.
    public var output: String { stdout + stderr }
}

public struct ProcessError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The one way tests run programs: posix_spawn with stdin, stdout and stderr only (no inherited
/// descriptors), reaped by PID with waitpid, always bounded by a time-out after which the child gets
/// SIGKILL. Output goes to files, so no pipe can fill up.
///
/// Not Foundation's `Process`: its child monitoring missed exits when many children came and went,
/// and a `Process` left running made another one's wait hang (both seen in this suite).
public enum ProcessRunner {
    /// Runs a program to completion (blocking the calling thread), bounded by `timeout` seconds.
    /// A name without `/` is looked up in PATH (and /usr/sbin, /sbin).
    @discardableResult
    public static func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:],
                           directory: String? = nil, stdin: String? = nil, timeout: Double = 600) throws -> ProcessResult {
        let files = OutputFiles()
        defer { files.remove() }
        let child = try ChildProcess(executable, arguments, environment: environment, directory: directory,
                                     stdin: stdin, stdout: files.out, stderr: files.err)
        let deadline = Date().addingTimeInterval(timeout)
        while child.isRunning && Date() < deadline { usleep(10_000) }
        let timedOut = child.isRunning
        if timedOut { child.kill(SIGKILL) }
        return files.result(status: child.wait(), timedOut: timedOut)
    }

    /// The same without holding a thread: the child is polled between `Task.sleep`s, so a long command
    /// never blocks Swift's cooperative pool. Cancelling the task kills the child.
    @discardableResult
    public static func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:],
                           directory: String? = nil, stdin: String? = nil, timeout: Double = 600) async throws -> ProcessResult {
        let files = OutputFiles()
        defer { files.remove() }
        let child = try ChildProcess(executable, arguments, environment: environment, directory: directory,
                                     stdin: stdin, stdout: files.out, stderr: files.err)
        let deadline = Date().addingTimeInterval(timeout)
        while child.isRunning && Date() < deadline {
            do {
                try await Task.sleep(for: .milliseconds(10))
            } catch {
                child.kill(SIGKILL)
                child.wait()
                throw error
            }
        }
        let timedOut = child.isRunning
        if timedOut { child.kill(SIGKILL) }
        return files.result(status: child.wait(), timedOut: timedOut)
    }

    /// `/bin/sh -c command`.
    @discardableResult
    public static func shell(_ command: String, directory: String? = nil, timeout: Double = 120) throws -> ProcessResult {
        try run("/bin/sh", ["-c", command], directory: directory, timeout: timeout)
    }

    @discardableResult
    public static func shell(_ command: String, directory: String? = nil, timeout: Double = 120) async throws -> ProcessResult {
        try await run("/bin/sh", ["-c", command], directory: directory, timeout: timeout)
    }

    /// Where `tool` is: PATH, then /usr/sbin, /sbin, /usr/bin, /bin. nil when it is not installed.
    public static func which(_ tool: String) -> String? {
        if tool.contains("/") { return FileManager.default.isExecutableFile(atPath: tool) ? tool : nil }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let directories = path.split(separator: ":").map(String.init) + ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        return directories.lazy.map { $0 + "/" + tool }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// The tools of `tools` that are not installed, or nil when all are: for `.enabled(if:)` conditions.
    public static func missing(_ tools: [String]) -> String? {
        let absent = tools.filter { which($0) == nil }
        return absent.isEmpty ? nil : "not installed: " + absent.joined(separator: ", ") + " (scripts/setup installs them)"
    }

    /// Runs a blocking body (child processes reaped by polling, waits for a VM's console) on a thread of
    /// its own. Swift Testing runs synchronous tests on the cooperative pool, one thread per core: a
    /// four-VM boot polling there for a minute or more, next to another synchronous test, can starve
    /// every async test in the process, whose sleeps and time-outs then run late.
    ///
    /// The body still runs inside the calling task (on `ThreadPerJobExecutor`, as its task executor),
    /// so the task-locals Swift Testing keeps go with it: an `#expect` that fails in there is reported
    /// against its own test, not as «unknown» beside a test that "passed".
    public static func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withTaskExecutorPreference(ThreadPerJobExecutor.shared) {
            try await ThreadPerJobExecutor.run(body)
        }
    }

    private struct OutputFiles {
        let out = NSTemporaryDirectory() + "ib-out-\(UUID().uuidString)"
        var err: String { out + ".err" }

        func result(status: Int32, timedOut: Bool) -> ProcessResult {
            ProcessResult(status: status, stdoutData: (try? Data(contentsOf: URL(fileURLWithPath: out))) ?? Data(),
                          stderr: (try? String(contentsOfFile: err, encoding: .utf8)) ?? "", timedOut: timedOut)
        }

        func remove() { unlink(out); unlink(err) }
    }
}

/// A child process started with posix_spawn and reaped with waitpid (by its PID, never a wildcard).
public final class ChildProcess: @unchecked Sendable {
    public let pid: pid_t
    private let lock = NSLock()
    private var exitStatus: Int32?

    /// Starts `executable` with stdin from `stdin` (default /dev/null) and stdout/stderr appended to
    /// the given files (the same file for both is fine). `environment` is added to this process's own.
    public init(_ executable: String, _ arguments: [String], environment: [String: String] = [:], directory: String? = nil,
                stdin: String? = nil, stdout: String, stderr: String) throws {
        guard let path = ProcessRunner.which(executable) else { throw ProcessError("cannot start \(executable): not found") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, stdin ?? "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdout, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        // NIO opens its sockets without CLOEXEC. A child that inherits a server's accepted socket keeps
        // the connection open after the server closes it (no FIN while the child lives), which is how a
        // QEMU or `imagebuild serve` started by one test broke another test's time-out check.
        // (glibc 2.34+; Swift's Glibc module does not export it, so it is looked up by name.)
        guard let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") else {
            throw ProcessError("this libc has no posix_spawn_file_actions_addclosefrom_np")
        }
        let addCloseFrom = unsafeBitCast(symbol, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, CInt) -> CInt).self)
        guard addCloseFrom(&actions, 3) == 0 else { throw ProcessError("posix_spawn_file_actions_addclosefrom_np failed") }
        var env = ProcessInfo.processInfo.environment
        env.merge(environment) { $1 }
        // posix_spawn has no portable chdir action: a directory is entered by a shell first.
        let command = directory.map { ["/bin/sh", "-c", "cd \"$0\" && exec \"$@\"", $0, path] + arguments } ?? [path] + arguments
        let argv = command.map { strdup($0) } + [nil]
        let envp = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { argv.forEach { free($0) }; envp.forEach { free($0) } }
        var pid = pid_t()
        // The child starts with no blocked signals and SIGPIPE at its default: a test thread may block
        // SIGCHLD (NIO, Dispatch), and an inherited mask made `sh -c 'a & b & wait'` wait forever.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t(), defaults = sigset_t()
        sigemptyset(&noSignals)
        sigemptyset(&defaults)
        sigaddset(&defaults, SIGPIPE)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let rc = posix_spawn(&pid, command[0], &actions, &attributes, argv, envp)
        guard rc == 0 else { throw ProcessError("cannot start \(executable): \(String(cString: strerror(rc)))") }
        self.pid = pid
    }

    /// Non-blocking check; reaps the child when it has exited.
    public var isRunning: Bool {
        lock.lock(); defer { lock.unlock() }
        if exitStatus != nil { return false }
        var status: Int32 = 0
        let result = waitpid(pid, &status, WNOHANG)
        if result == pid { exitStatus = Self.decode(status); return false }
        return result == 0
    }

    /// Sends `signal` to the child, by its PID, if it has not been reaped yet.
    public func kill(_ signal: Int32) { if isRunning { _ = Glibc.kill(pid, signal) } }

    /// Waits for the child to exit; its status (128 + signal when killed).
    @discardableResult
    public func wait() -> Int32 {
        lock.lock(); defer { lock.unlock() }
        if let exitStatus { return exitStatus }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        exitStatus = Self.decode(status)
        return exitStatus!
    }

    public var terminationStatus: Int32 { wait() }

    static func decode(_ status: Int32) -> Int32 {
        (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }
}

/// A process started in the background, its stdout and stderr in one log file, stopped by its PID
/// (SIGTERM, then SIGKILL after 5 s) by `stop()` or when released.
public final class BackgroundProcess: @unchecked Sendable {
    public let process: ChildProcess
    public let logPath: String

    public init(_ executable: String, _ arguments: [String], log: String, environment: [String: String] = [:]) throws {
        logPath = log
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        process = try ChildProcess(executable, arguments, environment: environment, stdout: log, stderr: log)
    }

    public var pid: pid_t { process.pid }
    public var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
    public var isRunning: Bool { process.isRunning }

    /// Waits until the log contains `pattern` (true) or the process exits / time runs out (false).
    public func wait(for pattern: String, timeout: Double) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if log.contains(pattern) { return true }
            if !process.isRunning { return log.contains(pattern) }
            usleep(200_000)
        }
        return false
    }

    /// Kills it outright (SIGKILL) and reaps it.
    public func kill() {
        process.kill(SIGKILL)
        process.wait()
    }

    public func stop() {
        guard process.isRunning else { return }
        process.kill(SIGTERM)
        let deadline = Date().addingTimeInterval(5)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning { process.kill(SIGKILL) }
        process.wait()
    }

    deinit { stop() }
}

/// A task executor that runs each job it is given on a new thread (8 MiB of stack), so a job that
/// blocks holds that thread only, never one of the cooperative pool's few.
public final class ThreadPerJobExecutor: TaskExecutor {
    public static let shared = ThreadPerJobExecutor()

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        let thread = Thread { job.runSynchronously(on: executor) }
        thread.stackSize = 8 << 20
        thread.start()
    }

    /// `body`, called from a nonisolated async function: with this executor preferred, that is one of
    /// its threads.
    nonisolated static func run<T: Sendable>(_ body: @Sendable () throws -> T) async throws -> T {
        try body()
    }
}
