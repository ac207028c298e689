import Foundation

/// The CPU architecture an image is built for and a node runs, by Debian's name (the one its packages,
/// `dpkg --print-architecture` and a recipe's `arch:` use).
///
/// A build for this machine's architecture takes its "host" files (busybox, the kernel, stage 1's
/// programs and libraries) from this machine. A build for another one takes them from a sysroot of
/// that architecture's Debian packages (`Sysroot`): nothing of it runs here except through QEMU's
/// user-mode emulator, for a static busybox to list its applets.
public enum Architecture: String, Sendable, Codable, CaseIterable, CustomStringConvertible {
    case amd64
    case arm64

    public var description: String { rawValue }

    /// This machine's architecture (what `uname -m` says, in Debian's name); nil on any other.
    public static let host: Architecture? = {
        var name = utsname()
        guard uname(&name) == 0 else { return nil }
        let machine = withUnsafeBytes(of: &name.machine) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        return Architecture(machine: machine)
    }()

    /// From a kernel's machine name (`uname -m`).
    public init?(machine: String) {
        switch machine {
        case "x86_64": self = .amd64
        case "aarch64", "arm64": self = .arm64
        default: return nil
        }
    }

    /// Whether a build for this architecture takes its host files from a sysroot rather than this machine.
    public var isForeign: Bool { self != Self.host }

    /// ELF `e_machine` of its programs and libraries.
    public var elfMachine: UInt16 {
        switch self {
        case .amd64: 62
        case .arm64: 183
        }
    }

    /// The target triple clang compiles stage 1's image loader for.
    public var clangTarget: String {
        switch self {
        case .amd64: "x86_64-linux-gnu"
        case .arm64: "aarch64-linux-gnu"
        }
    }

    /// QEMU's user-mode emulator for this architecture (Debian `qemu-user`).
    public var qemuUser: String {
        switch self {
        case .amd64: "qemu-x86_64"
        case .arm64: "qemu-aarch64"
        }
    }

    /// GRUB's `$grub_cpu` on it: a GRUB configuration refuses an image of another architecture.
    public var grubCPU: String {
        switch self {
        case .amd64: "x86_64"
        case .arm64: "arm64"
        }
    }

    /// Debian's metapackage of the architecture's generic kernel, the sysroot's default.
    public var kernelPackage: String { "linux-image-\(rawValue)" }

    /// The UEFI network boot loaders of an architecture whose loaders this machine's packages cannot
    /// provide (`Publisher.bootloaders` are x86's): GRUB, since Debian builds no arm64 iPXE. Carried in
    /// the image's artifacts and laid by publish under the names DHCP hands the firmware
    /// (`BootPlan.arm64GRUB`, `BootPlan.arm64HTTPGRUB`).
    public struct NetworkGRUB: Sendable {
        /// Debian's signed network GRUB, for PXE: its package, its path there, its artifact's name.
        public let signedPackage: String
        public let signedPath: String
        public let signedArtifact: String
        /// GRUB's modules, from which the build makes the GRUB for UEFI HTTP Boot with `grub-mkimage`:
        /// Debian's signed one has no `http` module, so loaded by URL it cannot read its configuration.
        public let modulesPackage: String
        public let modulesPath: String
        public let mkimageFormat: String
        public let httpArtifact: String
        /// What the HTTP Boot GRUB is made of: the network, the commands of the `grub.cfg` walk
        /// (`BootRenderer.grubEntry`, `grubConfig`) and `linux`; `grub-mkimage` adds their dependencies.
        public static let httpModules = ["efinet", "net", "http", "tftp", "normal", "configfile", "echo", "test", "regexp",
                                         "sleep", "reboot", "linux", "gzio"]
    }

    /// nil: this architecture's loaders come from this machine's packages.
    public var networkGRUB: NetworkGRUB? {
        switch self {
        case .amd64: nil
        case .arm64: NetworkGRUB(signedPackage: "grub-efi-arm64-signed", signedPath: "/usr/lib/grub/arm64-efi-signed/grubnetaa64.efi.signed",
                                 signedArtifact: "grubnetaa64.efi", modulesPackage: "grub-efi-arm64-bin",
                                 modulesPath: "/usr/lib/grub/arm64-efi", mkimageFormat: "arm64-efi", httpArtifact: "grubaa64-http.efi")
        }
    }
}
