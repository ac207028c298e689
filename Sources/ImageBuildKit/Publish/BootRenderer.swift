import Foundation

/// An image as published in a boot root: content-addressed by its manifest.
public struct PublishedImage: Sendable, Equatable, Codable {
    public var name: String
    public var digest: String
    public var kernelVersion: String
    /// The image's own command line (recipe cmdline + imagebuild.sha256=...).
    public var cmdline: String
    public var imageFile: String
    /// The BitTorrent client its initramfs carries (`initramfs.p2p`), nil: none (absent in older indexes).
    public var p2pClient: String?
    /// The architecture it runs on; nil in indexes written before there was a choice (amd64).
    public var arch: Architecture?
    /// The network loaders its artifacts carry for its architecture (`Architecture.networkGRUB`, arm64's
    /// GRUBs), published beside its kernel; nil: none.
    public var loaderFiles: [String]?
    /// The image file's `http://` URL in the object store `publish --store` put it in, nil: nodes fetch it
    /// from the boot root (and absent in indexes written before stores existed). Kept per image in
    /// `publish.json`, so the bootscript endpoint, which renders from there, gives the answer publish wrote.
    public var storeURL: String?
    /// `images/<name>/<digest>`, relative to the root.
    public var path: String { "images/\(name)/\(digest)" }
    /// Where nodes fetch the image file: the one answer for the kernel command line (stage 1's
    /// `imagebuild.image=`), the torrent's web seed and the bootscript endpoint. The object store when
    /// publish put it there, else the boot server (`httpBase`, e.g. `http://10.0.0.1:8080`). Kernel and
    /// initramfs always come from the boot root: the loaders fetch them before any of this runs.
    public func imageURL(httpBase: String) -> String { storeURL ?? "\(httpBase)/\(path)/\(imageFile)" }
    /// The image file's SHA-256, as its command line gives it to stage 1 (`imagebuild.sha256=`).
    public var sha256: String? {
        cmdline.split(separator: " ").first { $0.hasPrefix("imagebuild.sha256=") }.map { String($0.dropFirst("imagebuild.sha256=".count)) }
    }
    /// Mounted rather than unpacked by stage 1 (squashfs, erofs): the file stays whole in the node's RAM,
    /// so the node can seed it.
    public var isMounted: Bool { imageFile == "image.squashfs" || imageFile == "image.erofs" }

    public init(manifest: Manifest) {
        name = manifest.name
        digest = String(manifest.contentDigest.prefix(16))
        kernelVersion = manifest.kernelVersion
        cmdline = manifest.cmdline
        imageFile = manifest.files.keys.first { $0.hasPrefix("image.") } ?? "image.tar.gz"
        p2pClient = manifest.p2pClient
        arch = manifest.arch
        if let grub = manifest.arch?.networkGRUB {
            let files = [grub.signedArtifact, grub.httpArtifact].filter { manifest.files[$0] != nil }
            loaderFiles = files.isEmpty ? nil : files
        }
    }

    /// Its architecture, the older indexes' amd64 included.
    public var architecture: Architecture { arch ?? .amd64 }
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
    /// The boot-root path of the image's `.torrent` when the target fetches it from the swarm
    /// (`distribution: p2p`, `Torrent.path`); nil: over HTTP.
    public var torrentPath: String?
    /// Seconds a p2p node keeps seeding after it has the image (`seed_time:`).
    public var seedTime: Int = Inventory.defaultSeedTime

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
        if resolution.distribution == .p2p {
            torrentPath = Torrent.path(of: image)
            seedTime = resolution.seedTime
        }
    }
}

/// Renders pxelinux.cfg files, iPXE scripts and GRUB configurations. Pure: the same inventory and
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
        parts.append("imagebuild.image=" + target.image.imageURL(httpBase: base))
        parts.append("imagebuild.server=\(base)")
        if !target.overlays.isEmpty {
            parts.append("imagebuild.overlay=" + target.overlays.map { "\(base)/\($0)" }.joined(separator: ","))
        }
        if let secrets = target.secretsPath { parts.append("imagebuild.secrets=\(base)\(secrets)") }
        if let torrent = target.torrentPath {
            parts.append("imagebuild.torrent=\(base)/\(torrent)")
            parts.append("imagebuild.seed=\(target.seedTime)")
        }
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

    /// A GRUB configuration (`grub/grub.cfg-…`) that boots `target`: kernel and initramfs over TFTP
    /// from GRUB's root, the network device it was loaded from. Under Secure Boot, GRUB has shim verify
    /// the kernel: an unsigned one fails `linux` ("bad shim signature"), and then the machine says so
    /// and resets after `delay` seconds to boot again, as pxelinux and iPXE nodes do, instead of
    /// sitting in GRUB's menu. `mac`: the node's MAC for `BOOTIF`, nil (a range, the default) for the
    /// one GRUB booted from, `$net_default_mac`. The x86-64 and arm64 GRUBs read the same walk, so a
    /// machine of another architecture than the image's (a default image, a range) is told so and reset
    /// rather than handed a kernel it cannot run.
    public func grubConfig(_ target: BootTarget, mac: MACAddress?, delay: Int = 30) -> String {
        let bootif = mac.map { "BOOTIF=\($0.pxelinuxName)" } ?? "BOOTIF=01-${net_default_mac}"
        let words = kernelCommandLine(target).split(separator: " ").map { Self.grubQuoted(String($0)) } + [bootif]
        let arch = target.image.architecture
        return """
            # imagebuild: \(target.title) boots \(target.image.name) \(target.image.digest)
            if [ "$grub_cpu" != "\(arch.grubCPU)" ]; then
              echo "imagebuild: \(target.image.name) is built for \(arch), this machine is $grub_cpu; restarting in \(delay) s"
              sleep \(delay)
              reboot
            fi
            set default=0
            set timeout=0
            menuentry 'imagebuild: \(target.image.name) \(target.image.digest)' {
              if linux /\(target.image.path)/vmlinuz \(words.joined(separator: " ")); then
                if initrd /\(target.image.path)/initramfs.img; then boot; fi
              fi
              echo 'imagebuild: booting \(target.image.name) failed; restarting in \(delay) s'
              sleep \(delay)
              reboot
            }

            """
    }

    /// `grub/grub.cfg`, the one file Debian's network GRUB 2.06 reads: it walks `grubLookupOrder` itself
    /// (this machine's `grub.cfg-01-<mac>`, then `grub.cfg-<its IP>`, then `grub.cfg-default`).
    /// `configfile` of a file that does not exist fails and the script goes on to the next, as
    /// pxelinux's walk does; one that exists boots at once (its `timeout=0`).
    public func grubEntry() -> String {
        #"""
        # imagebuild: GRUB's entry point. Debian's GRUB reads only this file, so the walk is here:
        # this machine's own file, then one for its address, then the default.
        regexp --set=1:m1 --set=2:m2 --set=3:m3 --set=4:m4 --set=5:m5 --set=6:m6 '^(..):(..):(..):(..):(..):(..)$' "$net_default_mac"
        configfile "$prefix/grub.cfg-01-$m1-$m2-$m3-$m4-$m5-$m6"
        configfile "$prefix/grub.cfg-$net_default_ip"
        configfile "$prefix/grub.cfg-default"

        """#
    }

    /// GRUB's `grub.cfg-default` when there is no default image: machines not listed are not booted.
    public func grubUnregistered(delay: Int = 30) -> String {
        """
        # imagebuild: no default image; unregistered machines are not booted
        echo 'imagebuild: this machine is not registered in nodes.yaml; trying again in \(delay) s'
        sleep \(delay)
        reboot

        """
    }

    /// One kernel parameter as a GRUB script word: single-quoted (GRUB's quoting is the shell's) when it
    /// holds a character GRUB's parser would take for syntax (`$`, quotes, `;`, braces, …).
    public static func grubQuoted(_ word: String) -> String {
        let plain = word.unicodeScalars.allSatisfy { CharacterSet.alphanumerics.contains($0) || "=,.:/_-+@%".unicodeScalars.contains($0) }
        return plain ? word : "'" + word.replacingOccurrences(of: "'", with: #"'\''"#) + "'"
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
