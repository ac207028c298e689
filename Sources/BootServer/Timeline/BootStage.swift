import Foundation
import ImageBuildKit

/// Where a node's boot is, derived from what the server saw and what the node reported.
/// Ordered as a boot goes: a node at `.up` or `.failed` that is seen at an early stage again has rebooted.
public enum BootStage: String, Sendable, Codable, CaseIterable, Comparable {
    /// Listed in the inventory, never seen since the journal began.
    case unseen
    case dhcp
    /// Network boot program (pxelinux, iPXE, ldlinux.c32) fetched.
    case bootloader
    /// pxelinux.cfg file or iPXE script fetched.
    case config
    case kernel
    case initrd
    /// Stage 1 (`/init`) reported it runs and has an address.
    case stage1
    /// Stage-2 image downloading, downloaded or verified.
    case image
    /// The node's own files (overlay, secrets) laid over the root; `switch_root` comes next.
    case overlay
    case switchRoot = "switch-root"
    case up
    case failed

    public static func < (a: BootStage, b: BootStage) -> Bool { a.rank < b.rank }

    /// Its place in `allCases` (declaration order), without building that array on every comparison.
    private var rank: Int {
        switch self {
        case .unseen: 0
        case .dhcp: 1
        case .bootloader: 2
        case .config: 3
        case .kernel: 4
        case .initrd: 5
        case .stage1: 6
        case .image: 7
        case .overlay: 8
        case .switchRoot: 9
        case .up: 10
        case .failed: 11
        }
    }

    /// Stages a reboot starts with: seeing one of them after `.up`/`.failed` begins a new boot.
    var beginsBoot: Bool { self == .dhcp || self == .bootloader || self == .config }

    /// The stage a fetched file belongs to, by its name; nil for a file that is no step of a boot
    /// (`manifest.json`, `cmdline`, anything else), so fetching it moves no node. Image folders hold
    /// `vmlinuz`, `initramfs.img` and `image.<format>` (see `PublishedImage`); loaders are network boot
    /// programs by their extension (`pxelinux.0`, `undionly.kpxe`, `ipxe.efi`, `ldlinux.c32`, ...).
    public static func forFile(_ path: String) -> BootStage? {
        // Asked for every file served and every transfer recorded, several times a boot: bytes
        // compared in place, no copy, no Unicode rules, no generic search (a profile of the storm
        // found the String version at 80-180 microseconds a boot).
        var path = path
        return path.withUTF8(classify)
    }

    private static func classify(_ path: UnsafeBufferPointer<UInt8>) -> BootStage? {
        let slash = UInt8(ascii: "/")
        var end = path.count
        while end > 0, path[end - 1] == slash { end -= 1 }
        var start = end
        while start > 0, path[start - 1] != slash { start -= 1 }
        let name = UnsafeBufferPointer(rebasing: path[start..<end])
        func starts(_ prefix: StaticString) -> Bool {
            name.count >= prefix.utf8CodeUnitCount && memcmp(name.baseAddress!, prefix.utf8Start, prefix.utf8CodeUnitCount) == 0
        }
        func equals(_ text: StaticString) -> Bool { name.count == text.utf8CodeUnitCount && starts(text) }
        /// ASCII letters of the name compared in lower case (`suffix` is lower case).
        func ends(_ suffix: StaticString, ignoringCase: Bool = false) -> Bool {
            let count = suffix.utf8CodeUnitCount
            guard name.count >= count else { return false }
            for index in 0..<count {
                var byte = name[name.count - count + index]
                if ignoringCase, byte >= UInt8(ascii: "A"), byte <= UInt8(ascii: "Z") { byte |= 0x20 }
                if byte != suffix.utf8Start[index] { return false }
            }
            return true
        }
        if starts("vmlinuz") || equals("bzImage") || equals("kernel") { return .kernel }
        if starts("initramfs") || starts("initrd") { return .initrd }
        if starts("image.") { return .image }
        func pathContains(_ needle: StaticString) -> Bool {
            let count = needle.utf8CodeUnitCount
            guard path.count >= count else { return false }
            for offset in 0...(path.count - count) where memcmp(path.baseAddress! + offset, needle.utf8Start, count) == 0 { return true }
            return false
        }
        if pathContains("pxelinux.cfg/") || ends(".ipxe") || ends(".cfg") || equals("bootscript") {
            return .config
        }
        // GRUB's walk: `grub.cfg-01-<mac>`, `grub.cfg-<hex IP>`, … (`grub.cfg` itself ends in .cfg).
        if starts("grub.cfg-") { return .config }
        if loaderExtensions.contains(where: { ends($0, ignoringCase: true) }) { return .bootloader }
        return nil
    }

    /// Network boot programs: PXE NBPs (`.0`, `.pxe`, `.kpxe`, `.kkpxe`), EFI applications, syslinux
    /// modules, iPXE's Linux-kernel form.
    static let loaderExtensions: [StaticString] = [".0", ".pxe", ".kpxe", ".kkpxe", ".efi", ".c32", ".lkrn"]
}

/// What a node reports to `POST /api/v1/events` (stage 1 and stage 2 scripts): the names are
/// decided once, in ImageBuildKit next to the stage-1 scripts, which the simulator uses too.
public typealias NodeReport = StageReport

extension StageReport {
    /// The stage a report moves its node to.
    public var stage: BootStage {
        switch self {
        case .stage1Start: .stage1
        case .imageDownloaded, .imageVerified: .image
        case .overlay: .overlay
        case .switchRoot: .switchRoot
        case .up: .up
        case .failed: .failed
        }
    }
}

/// The DHCP exchange steps the timeline tells apart (the DHCP service maps its message types onto these).
public enum DHCPStep: String, Sendable, Codable, CaseIterable {
    case discover, offer, request, ack, nak, decline, release, inform
    /// A request the server chose not to answer (the detail says why).
    case ignored
}

/// Why a node sits in a stage, and what usually causes it to stay there. One table, used by the
/// status page (through `/api/v1/nodes`) and by `imagebuild status`.
public enum StuckHints {
    /// How long a node may stay in a stage before it counts as stuck. Generous: TCG VMs and busy
    /// servers are slow, and a false "stuck" costs an admin's attention.
    public static func threshold(for stage: BootStage) -> TimeInterval? {
        switch stage {
        case .unseen, .up: nil
        case .failed: 0
        case .dhcp: 60
        case .bootloader, .config: 90
        case .kernel: 180
        case .initrd: 300
        case .stage1: 180
        case .image: 900
        // Next come boot.env and the switch-root report, seconds; but a lost switch-root report
        // leaves a node here while stage 2 starts, as long as it stays in switch-root.
        case .overlay: 300
        case .switchRoot: 300
        }
    }

    /// The one-line hint for a node stuck in `stage`; `lastDHCPStep` refines the DHCP case.
    public static func hint(stage: BootStage, lastDHCPStep: DHCPStep? = nil) -> String? {
        switch stage {
        case .unseen, .up: return nil
        case .dhcp:
            switch lastDHCPStep {
            case .discover?, .ignored?:
                return "DISCOVER seen, no offer sent: the MAC is not in nodes.yaml and there is no pool, or the policy ignored it (server log says why)"
            case .offer?:
                return "offered but never requested: the client did not accept our offer; another DHCP server on the segment?"
            case .request?:
                return "requested but not acknowledged: the request named another server or an address we cannot give"
            case .nak?:
                return "request refused (NAK): the client asked for an address it may not have; it should start over with DISCOVER"
            case .decline?:
                return "the client declined the address (ARP conflict): another host uses that IP"
            case .ack?, .inform?, .release?, nil:
                return "address acknowledged but no boot file fetched: TFTP/HTTP unreachable (firewall on UDP 69?) or the firmware rejected the boot file"
            }
        case .bootloader:
            return "boot loader loaded but no config fetched: wrong loader for the firmware (BIOS vs UEFI) or ldlinux.c32 missing"
        case .config:
            return "config fetched but no kernel requested: the config names an unpublished image or an unreachable URL (check publish.json and http_port)"
        case .kernel:
            return "kernel requested but no initramfs: the transfer stalled or was cut (look for incomplete downloads in the timeline)"
        case .initrd:
            return "initramfs loaded but stage 1 never reported: kernel did not start (console=?), NIC driver missing from modules, or imagebuild.server unreachable"
        case .stage1:
            return "stage 1 runs but the image did not arrive: wrong image URL, HTTP errors, or a slow link (see the HTTP downloads)"
        case .image:
            return "image downloaded but no switch_root: sha256 mismatch, unpacking failed (tmpfs too small?), or the node's files (overlay, secrets) did not come; see the node console"
        case .overlay:
            return "node files laid over the root but neither switch_root nor 'up' reported: stage 1 stopped before switch_root, or the network went down; see the node console"
        case .switchRoot:
            return "switch_root done but the node never reported 'up': stage 2 init did not start its report, or the network went down"
        case .failed:
            return "stage 1 reported a failure (detail says which step); the node retries after its onfail delay"
        }
    }
}
