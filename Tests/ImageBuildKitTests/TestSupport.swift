import Foundation
@testable import ImageBuildKit

/// A temporary directory removed when the value is released.
final class TemporaryDirectory {
    let path: String
    init(_ name: String = "ib") {
        let template = NSTemporaryDirectory() + "\(name).XXXXXX"
        var bytes = Array(template.utf8CString)
        path = bytes.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }

    func write(_ relative: String, _ text: String) -> String {
        let file = path + "/" + relative
        try! FileManager.default.createDirectory(atPath: (file as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try! text.write(toFile: file, atomically: false, encoding: .utf8)
        return file
    }
}

/// Runs a host command, returning stdout; fails the test on a non-zero exit.
@discardableResult
func sh(_ command: String, in directory: String? = nil) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/sh")
    process.arguments = ["-c", command]
    if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
    let out = Pipe()
    process.standardOutput = out
    try process.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    if process.terminationStatus != 0 {
        throw ToolError(command: [command], status: process.terminationStatus, stderr: String(decoding: data, as: UTF8.self))
    }
    return String(decoding: data, as: UTF8.self)
}
