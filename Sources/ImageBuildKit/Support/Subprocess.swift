import Foundation

/// Runs a host tool and captures its output. Errors carry the tool's own
/// stderr, because "exit status 1" alone never helped anyone.
public struct ToolError: Error, CustomStringConvertible {
    public var command: [String]
    public var status: Int32
    public var stderr: String
    public var description: String {
        let tail = stderr.split(separator: "\n").suffix(8).joined(separator: "\n    ")
        return "\(command.joined(separator: " ")) failed (status \(status))" + (tail.isEmpty ? "" : ":\n    \(tail)")
    }
}

enum Tool {
    /// Finds an executable on PATH (plus the sbin directories root normally has).
    static func find(_ name: String) -> String? {
        if name.hasPrefix("/") { return FileManager.default.isExecutableFile(atPath: name) ? name : nil }
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin") + ":/usr/sbin:/sbin"
        for dir in path.split(separator: ":") {
            let candidate = "\(dir)/\(name)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    @discardableResult
    static func run(_ arguments: [String], directory: String? = nil, environment: [String: String]? = nil,
                    passOutput: Bool = false) throws -> String {
        guard let executable = find(arguments[0]) else {
            throw ToolError(command: arguments, status: 127, stderr: "\(arguments[0]): not found on PATH")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = Array(arguments.dropFirst())
        if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
        if let environment { process.environment = environment }
        let out = Pipe(), err = Pipe()
        process.standardOutput = passOutput ? FileHandle.standardError : out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        try process.run()
        // Drain both pipes concurrently so a chatty tool cannot block on a full pipe.
        let errData = LockedData()
        let errThread = Thread { errData.set(err.fileHandleForReading.readDataToEndOfFile()) }
        errThread.start()
        let outData = passOutput ? Data() : out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        while !errData.isSet { usleep(1000) }
        if process.terminationStatus != 0 {
            throw ToolError(command: arguments, status: process.terminationStatus,
                            stderr: String(decoding: errData.value, as: UTF8.self))
        }
        return String(decoding: outData, as: UTF8.self)
    }
}

final class LockedData: @unchecked Sendable {
    private let lock = NSLock()
    private var data: Data?
    func set(_ value: Data) { lock.lock(); data = value; lock.unlock() }
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return data != nil }
    var value: Data { lock.lock(); defer { lock.unlock() }; return data ?? Data() }
}
