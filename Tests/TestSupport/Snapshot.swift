import Foundation
import Testing

/// Golden files ("snapshots"): text a test produces, compared with a file checked into the source tree.
///
/// - Normally a difference fails the test with the first differing line, and a missing file fails it
///   with the command that records it.
/// - With `IMAGEBUILD_RECORD=1` in the environment the file is (re)written instead, and the test
///   still fails ("snapshot re-recorded"): a recording run can never pass for a green one. Review the
///   change with `git diff`, then run again without the variable.
public enum Snapshot {
    /// The environment variable that turns recording on.
    public static let recordVariable = "IMAGEBUILD_RECORD"

    /// Recording when `IMAGEBUILD_RECORD` is set to anything but empty or `0`. Read once.
    public static let isRecording: Bool = {
        let value = ProcessInfo.processInfo.environment[recordVariable] ?? ""
        return !value.isEmpty && value != "0"
    }()

    /// Compares `actual` with the snapshot file at `path` (or records it: see the type's description).
    public static func expect(_ actual: String, matches path: String, sourceLocation: SourceLocation = #_sourceLocation) {
        let name = (path as NSString).lastPathComponent
        let expected = try? String(contentsOfFile: path, encoding: .utf8)
        if isRecording {
            do {
                try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                try actual.write(toFile: path, atomically: true, encoding: .utf8)
            } catch {
                Issue.record("snapshot \(name): cannot write \(path): \(error)", sourceLocation: sourceLocation)
                return
            }
            let what = expected == nil ? "recorded (new)" : expected == actual ? "re-recorded (unchanged)" : "re-recorded (changed)"
            Issue.record("snapshot \(what): \(path). Review the diff (git diff), then run again without \(recordVariable)",
                         sourceLocation: sourceLocation)
            return
        }
        guard let expected else {
            Issue.record("snapshot \(name) is missing (\(path)); record it with \(recordVariable)=1 swift test --filter <this test>, review it, and run again without \(recordVariable)",
                         sourceLocation: sourceLocation)
            return
        }
        if let difference = firstDifference(expected: expected, actual: actual) {
            Issue.record("snapshot \(name) (\(path)) differs; if the change is intended, re-record with \(recordVariable)=1 and review the diff. First difference at \(difference)",
                         sourceLocation: sourceLocation)
        }
    }

    /// Where two texts first differ, as a readable line (1-based) with both versions; nil when equal.
    public static func firstDifference(expected: String, actual: String) -> String? {
        if expected == actual { return nil }
        let old = expected.split(separator: "\n", omittingEmptySubsequences: false)
        let new = actual.split(separator: "\n", omittingEmptySubsequences: false)
        for index in 0..<max(old.count, new.count) {
            let a = index < old.count ? "\"\(old[index])\"" : "(end of snapshot)"
            let b = index < new.count ? "\"\(new[index])\"" : "(end of output)"
            if a != b {
                return "line \(index + 1) of \(old.count):\n  snapshot: \(a)\n  actual:   \(b)"
            }
        }
        return "no line, yet the bytes differ (line endings or invisible characters)"
    }
}
