/// The stage names a node posts to the boot server (`POST /api/v1/events`, `"stage"`): the
/// stage-1 scripts (`report NAME` in `Initramfs/stage1/`), stage 2 (`up`, from the recipe's own
/// init) and the boot-storm simulator. The server accepts exactly these (`NodeReport` in
/// BootServer is this type) and maps each to a `BootStage`. StageReportContractTests checks the
/// scripts against this list.
public enum StageReport: String, Sendable, Codable, CaseIterable {
    /// Stage 1 runs and has an address (sent by `/init`).
    case stage1Start = "stage1-start"
    /// The stage-2 image arrived (`/load_img.sh`).
    case imageDownloaded = "image-downloaded"
    /// Its sha256 matched (`/load_img.sh`).
    case imageVerified = "image-verified"
    /// The node's own files (overlay, secrets) are laid over the root (`/load_img.sh`); sent only
    /// by nodes whose command line names some, so a healthy boot may skip it.
    case overlay
    /// About to `switch_root` (`/load_img.sh`).
    case switchRoot = "switch-root"
    /// Stage 2 is up: sent by the image itself, not by stage 1.
    case up
    /// A step of stage 1 failed (`fail` in `/init`).
    case failed

    /// Sent by stage 2 rather than by the stage-1 scripts.
    public var isStageTwo: Bool { self == .up }
}
