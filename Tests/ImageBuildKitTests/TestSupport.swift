import Foundation
import Testing
import TestSupport
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

/// Runs a host command (`ProcessRunner.shell`), returning stdout; throws on a non-zero exit.
@discardableResult
func sh(_ command: String, in directory: String? = nil) throws -> String {
    let result = try ProcessRunner.shell(command, directory: directory, timeout: 600)
    if result.status != 0 {
        throw ToolError(command: [command], status: result.status, stderr: result.output)
    }
    return result.stdout
}

/// The text of the error `body` throws (a ConfigError, ConfigErrors, ...); records an issue when it throws none.
func errorText(_ body: () throws -> Void, sourceLocation: Testing.SourceLocation = #_sourceLocation) -> String {
    do { try body() } catch { return "\(error)" }
    Issue.record("no error", sourceLocation: sourceLocation)
    return ""
}
