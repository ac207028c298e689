import Foundation

/// A crash on request, at a named point, for one test: `PublishKillTests` (Tests/EndToEndTests) runs
/// the real `imagebuild publish` with `IMAGEBUILD_FAULT=publish:<point>` and checks that a publish
/// killed there (SIGKILL: no clean-up of any kind) leaves the boot root whole. Killing a separate
/// process at an exact point between two file-system steps needs the process's own help; this is it.
///
/// The points are the `checkpoint(...)` calls of `Publisher.publish` (`image-copied`, `images-done`,
/// `generation-files`, `generation-written`, `before-switch`, `after-switch`, and with `--store`
/// `store-part-stored`, after each part the store accepted; `StorePublishTests` kills there). The variable is read
/// once; when it is unset (always, outside that test), `crash(at:)` does nothing.
public enum FaultInjection {
    /// The environment variable naming the point, e.g. `publish:before-switch`.
    public static let variable = "IMAGEBUILD_FAULT"

    static let requested: String? = ProcessInfo.processInfo.environment[variable]

    /// Kills this process with SIGKILL if `IMAGEBUILD_FAULT` names `point`.
    static func crash(at point: String) {
        if let requested, requested == point { kill(getpid(), SIGKILL) }
    }
}
