/// The stage-1 programs of the initramfs: the shell scripts in `Initramfs/stage1/`
/// (`init.sh`, `load_img.sh`, `udhcpc.script`), compiled into the binary as SwiftPM
/// resources (`.embedInCode`) so the single `imagebuild` binary carries them wherever
/// it is copied. The suite lints them (shellcheck, `sh -n`: StageOneScriptTests).
/// A recipe can replace `/init` and `/load_img.sh` with its own files.
///
/// The recipe's settings reach `/init` through `/etc/imagebuild/stage1.conf`
/// (`config(onFail:onFailDelay:retries:)`), which it sources. Contract with the
/// rest of the system: docs/architecture.md, "Kernel command line" (the
/// `imagebuild.*` parameters, which override the config file) and "How a node
/// boots" (the reports, `StageReport`).
public enum StageOneScripts {
    /// `/init`: mounts, modules, network, then sources `/load_img.sh`.
    public static let initScript = text(PackageResources.init_sh)

    /// `/load_img.sh`: download (resume, retry, back-off), verify, unpack, switch_root.
    public static let loadImageScript = text(PackageResources.load_img_sh)

    /// udhcpc hook: configures the interface and records the lease for /init.
    public static let udhcpcScript = text(PackageResources.udhcpc_script)

    /// Where the build writes `config(...)` in the initramfs; `/init` sources it when present.
    public static let configPath = "/etc/imagebuild/stage1.conf"

    /// The recipe's stage-1 settings as `/init` sources them (`ONFAIL`, `ONFAIL_DELAY`, `RETRIES`).
    public static func config(onFail: OnFail, onFailDelay: Int, retries: Int) -> String {
        configFile([("ONFAIL", onFail.rawValue), ("ONFAIL_DELAY", String(onFailDelay)), ("RETRIES", String(retries))])
    }

    /// Shell assignments, one a line, each value single-quoted: sourcing it sets the
    /// variables to exactly these strings and runs nothing.
    static func configFile(_ assignments: [(name: String, value: String)]) -> String {
        var text = "# imagebuild stage 1 settings from the recipe, sourced by /init;\n"
            + "# imagebuild.onfail= and imagebuild.retries= on the kernel command line override them.\n"
        for (name, value) in assignments {
            precondition(name.allSatisfy { $0 == "_" || ($0.isASCII && ($0.isUppercase || $0.isNumber)) }, "not a variable name: \(name)")
            text += "\(name)=\(shellQuoted(value))\n"
        }
        return text
    }

    /// `value` as one single-quoted shell word (`'` becomes `'\''`).
    static func shellQuoted(_ value: String) -> String {
        "'" + value.replacingOccurrences(of: "'", with: #"'\''"#) + "'"
    }

    private static func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }
}
