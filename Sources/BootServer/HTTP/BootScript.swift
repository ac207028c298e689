import BootProtocols
import Foundation
import ImageBuildKit
import Synchronization

/// What the bootscript endpoint does for a MAC that is not in the inventory.
public enum UnknownMACPolicy: String, Sendable, CaseIterable {
    /// Boot the inventory's range (by the client's address) or default image, like `ipxe/default.ipxe`.
    case defaultImage = "default"
    /// Always send the "not registered, retrying" script, even when there is a default image.
    case wait
}

/// The iPXE script for one request to `GET /boot/v1/bootscript?mac=…&retry=N`, built from the inventory
/// in force and the published images at request time. Pure: inputs in, script out.
struct BootScriptDecision: Equatable {
    var script: String
    /// The image the script boots; nil for a wait-and-retry script.
    var image: String?
    /// Why (for the timeline and the log).
    var detail: String

    /// Seconds a waiting node sleeps before asking again: grows with each retry, capped at a minute.
    static func retryDelay(_ retry: Int) -> Int { min(60, 5 * (max(0, retry) + 1)) }

    /// - Parameter reportToken: the node's per-boot report token, added to the kernel command line as
    ///   `imagebuild.token=` (see `ReportTokens`); nil when tokens are off.
    static func decide(mac: MACAddress, clientIP: IPv4Address?, retry: Int, inventory: Inventory?, index: PublishIndex?,
                       policy: UnknownMACPolicy, httpBaseOverride: String? = nil, reportToken: String? = nil) -> BootScriptDecision {
        let base = httpBaseOverride ?? inventory?.network.httpBase ?? ""
        let retryURL = "\(base)\(BootPlan.bootScriptPath)?mac=\(mac)&retry=\(retry + 1)"
        let delay = retryDelay(retry)
        func wait(_ reason: String) -> BootScriptDecision {
            BootScriptDecision(script: waitScript(reason: reason, retryURL: retryURL, delay: delay), image: nil, detail: reason)
        }
        guard let inventory else { return wait("no inventory is loaded on the server") }
        guard let index else { return wait("nothing is published in the boot root (no publish.json)") }
        let plan = BootPlan(inventory: inventory, index: index)
        let choice = policy == .wait && inventory.node(mac: mac) == nil ? nil : plan.choice(mac: mac, ip: clientIP)
        guard let choice else {
            return BootScriptDecision(script: plan.renderer.ipxeUnregistered(retryURL: retryURL, delay: delay),
                                      image: nil, detail: "not registered in nodes.yaml")
        }
        switch plan.answer(choice) {
        case .wait(let reason):
            return wait(reason)
        case .boot(var target, let why):
            if let reportToken { target.cmdline += (target.cmdline.isEmpty ? "" : " ") + "imagebuild.token=\(reportToken)" }
            return BootScriptDecision(script: plan.renderer.ipxeScript(target), image: target.image.name, detail: why)
        }
    }

    /// Like `BootRenderer.ipxeUnregistered`, for the server's own reasons to make a node wait.
    static func waitScript(reason: String, retryURL: String, delay: Int) -> String {
        """
        #!ipxe
        # imagebuild: cannot boot this machine yet; it waits and asks again
        echo imagebuild: ${mac}: \(reason.replacingOccurrences(of: "\n", with: " ")); asking again in \(delay) s
        sleep \(delay)
        chain --autofree \(retryURL)

        """
    }
}

/// `publish.json`, re-read only when it changes (a publish switches `.publish/current`, which gives the
/// resolved file a new inode), so a boot storm does not decode it once per node.
final class PublishIndexCache: Sendable {
    private struct Entry {
        var key: [Int]
        var index: PublishIndex
    }

    let root: String
    private let entry = Mutex<Entry?>(nil)

    init(root: String) { self.root = root }

    func current() -> PublishIndex? {
        let path = root + "/publish.json"
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        let key = [Int(info.st_dev), Int(info.st_ino), Int(info.st_size), info.st_mtim.tv_sec, info.st_mtim.tv_nsec]
        if let hit = entry.withLock({ $0 }), hit.key == key { return hit.index }
        guard let index = try? PublishIndex.read(root: root) else { return nil }
        entry.withLock { $0 = Entry(key: key, index: index) }
        return index
    }
}
