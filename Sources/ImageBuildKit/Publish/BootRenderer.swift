import Foundation

/// An image as published in a boot root: content-addressed by its manifest.
public struct PublishedImage: Sendable, Equatable, Codable {
    public var name: String
    public var digest: String
    public var kernelVersion: String
    /// The image's own command line (recipe cmdline + imagebuild.sha256=...).
    public var cmdline: String
    public var imageFile: String
    /// `images/<name>/<digest>`, relative to the root.
    public var path: String { "images/\(name)/\(digest)" }

    public init(manifest: Manifest) {
        name = manifest.name
        digest = String(manifest.contentDigest.prefix(16))
        kernelVersion = manifest.kernelVersion
        cmdline = manifest.cmdline
        imageFile = manifest.files.keys.first { $0.hasPrefix("image.") } ?? "image.tar.gz"
    }
}

/// What one boot target (a node, a range, the default) boots.
public struct BootTarget: Sendable, Equatable {
    public var title: String
    public var image: PublishedImage
    /// The inventory's part of the command line (node > group > defaults).
    public var cmdline: String
    /// The inventory's `cmdline` replaces the recipe's (see `Inventory.Resolution`).
    public var replacesImageCommandLine: Bool
    /// A registered node's overlay archives (boot-root paths, `OverlayPlan`), laid over its root in order.
    public var overlays: [String] = []
    /// The HTTP path of a registered node's secrets (`BootPlan.secretsPath`); nil: it has none.
    public var secretsPath: String?
    /// The HTTP path of a registered node's cloud-init seed (`CloudInit.seedPath`); nil: `cloud_init` is off.
    public var cloudInitPath: String?

    public init(title: String, image: PublishedImage, cmdline: String, replacesImageCommandLine: Bool = false) {
        self.title = title
        self.image = image
        self.cmdline = cmdline
        self.replacesImageCommandLine = replacesImageCommandLine
    }

    /// `resolution`'s command line for `image` (its image name is the caller's to check).
    public init(title: String, image: PublishedImage, resolution: Inventory.Resolution) {
        self.init(title: title, image: image, cmdline: resolution.cmdline,
                  replacesImageCommandLine: resolution.replacesImageCommandLine)
    }
}

/// Renders pxelinux.cfg files and iPXE scripts. Pure: the same inventory and
/// images always give the same text (golden-tested), and the HTTP server's
/// bootscript endpoint uses the very same functions.
public struct BootRenderer: Sendable {
    public let network: Inventory.Network

    public init(network: Inventory.Network) { self.network = network }

    /// The full kernel command line: the image's own (recipe `cmdline` and the build's `imagebuild.*`
    /// parameters), then the inventory's, then where stage 1 finds things. An inventory `cmdline`
    /// replaces the recipe's part: only the `imagebuild.*` parameters of the image stay, after it.
    public func kernelCommandLine(_ target: BootTarget) -> String {
        let base = network.httpBase
        var parts: [String] = []
        if target.replacesImageCommandLine {
            if !target.cmdline.isEmpty { parts.append(target.cmdline) }
            parts += target.image.cmdline.split(separator: " ").filter { $0.hasPrefix("imagebuild.") }.map(String.init)
        } else {
            parts.append(target.image.cmdline)
            if !target.cmdline.isEmpty { parts.append(target.cmdline) }
        }
        parts.append("imagebuild.image=\(base)/\(target.image.path)/\(target.image.imageFile)")
        parts.append("imagebuild.server=\(base)")
        if !target.overlays.isEmpty {
            parts.append("imagebuild.overlay=" + target.overlays.map { "\(base)/\($0)" }.joined(separator: ","))
        }
        if let secrets = target.secretsPath { parts.append("imagebuild.secrets=\(base)\(secrets)") }
        if let seed = target.cloudInitPath { parts.append(CloudInit.kernelParameter(seedURL: base + seed)) }
        return parts.joined(separator: " ")
    }

    /// A pxelinux config that boots `target`. With lpxelinux the kernel and
    /// initrd come over HTTP; plain pxelinux fetches them over TFTP.
    public func pxelinuxConfig(_ target: BootTarget) -> String {
        let http = network.biosLoader == "lpxelinux.0"
        let prefix = http ? "\(network.httpBase)/\(target.image.path)" : target.image.path
        return """
            # imagebuild: \(target.title) boots \(target.image.name) \(target.image.digest)
            DEFAULT imagebuild
            PROMPT 0
            TIMEOUT 0
            LABEL imagebuild
              KERNEL \(prefix)/vmlinuz
              INITRD \(prefix)/initramfs.img
              APPEND \(kernelCommandLine(target))
              IPAPPEND 2

            """
    }

    /// For machines nobody registered when there is no default image: say so,
    /// then hand back to the firmware, which retries the network boot.
    public func pxelinuxUnregistered() -> String {
        """
        # imagebuild: no default image; unregistered machines are not booted
        DEFAULT local
        PROMPT 0
        TIMEOUT 50
        SAY imagebuild: this machine is not registered in nodes.yaml; trying again
        LABEL local
          LOCALBOOT -1

        """
    }

    /// `ipxe/boot.ipxe`, the entry point for iPXE sent here by another DHCP server: the bootscript
    /// endpoint first (it applies the whole `BootPlan` rule, ranges included), then, when the root is
    /// served by a plain web server that has no such endpoint, the node's own script, else the default.
    public func bootIPXE(bootScriptURL: String) -> String {
        """
        #!ipxe
        # imagebuild: iPXE entry point. Asks the boot server; a plain web server has no such endpoint,
        # so then this machine's own script, else the default one.
        chain --autofree \(bootScriptURL)?mac=${mac} || chain --autofree nodes/${mac:hexhyp}.ipxe || chain --autofree default.ipxe

        """
    }

    /// A node script: kernel and initrd over HTTP, and on any failure a retry
    /// loop with a growing sleep (5, 10, ... 60 s) instead of a shell.
    /// `delay` is typed `int32` everywhere: `inc` cannot store into iPXE's default
    /// string type ("Operation not supported"), and an untyped failing `inc`
    /// ends the script, which is how a retry loop silently stops retrying.
    public func ipxeScript(_ target: BootTarget) -> String {
        let base = "\(network.httpBase)/\(target.image.path)"
        return """
            #!ipxe
            # imagebuild: \(target.title) boots \(target.image.name) \(target.image.digest)
            set delay:int32 5
            :retry
            kernel \(base)/vmlinuz initrd=initramfs.img \(kernelCommandLine(target)) || goto failed
            initrd \(base)/initramfs.img || goto failed
            boot || goto failed
            :failed
            echo imagebuild: booting \(target.image.name) failed; retrying in ${delay:int32} s
            imgfree
            sleep ${delay:int32}
            iseq ${delay:int32} 60 || inc delay:int32 5
            goto retry

            """
    }

    /// For an unknown machine when there is no default image.
    public func ipxeUnregistered(retryURL: String = "boot.ipxe", delay: Int = 30) -> String {
        """
        #!ipxe
        # imagebuild: no default image; unregistered machines wait and ask again
        echo imagebuild: ${mac} is not registered in nodes.yaml; asking again in \(delay) s
        sleep \(delay)
        chain --autofree \(retryURL)

        """
    }
}
