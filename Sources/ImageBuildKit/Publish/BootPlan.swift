import Foundation

/// What each machine boots: the one place that decides it.
///
/// Publish writes the plan's files, the server's bootscript endpoint asks it per request, DHCP asks it
/// which BIOS and which x86-64 UEFI loader a machine gets, and `nodes explain` prints its answer. Pure:
/// an inventory and the published images in, answers out (table-tested in `BootPlanTests`).
///
/// **The rule**, for a machine with MAC `m` and (when known) address `a`:
/// 1. a node registered with MAC `m` boots its own settings (node > group > defaults);
/// 2. else the most specific range containing `a` whose settings name an image (the longest prefix,
///    which is the first one pxelinux's hex-IP walk finds);
/// 3. else the default image, when `defaults` names one;
/// 4. else the machine waits and asks again.
///
/// The static files express the same rule as far as each loader can: pxelinux walks
/// `01-<mac>`, the hex-IP names (ranges) and `default` by itself; iPXE's `boot.ipxe` asks the
/// bootscript endpoint first (which applies the whole rule, ranges included) and falls back to
/// `nodes/<mac>.ipxe`, then `default.ipxe`, when the root is served by another web server; GRUB
/// (`loader: grub`) reads `grub/grub.cfg`, whose walk tries `grub.cfg-01-<mac>`, `grub.cfg-<IP>` (pool
/// addresses in a range) and `grub.cfg-default`.
public struct BootPlan: Sendable {
    public let inventory: Inventory
    /// The images the boot root holds, by name (a generation's `publish.json`).
    public let images: [String: PublishedImage]
    /// Each registered node's overlay archives (boot-root paths), as published (`OverlayPlan`).
    public let overlays: [MACAddress: [String]]
    public let renderer: BootRenderer

    /// The HTTP path of the per-request iPXE script (`?mac=…&retry=N`), served by `imagebuild serve`.
    public static let bootScriptPath = "/boot/v1/bootscript"

    public init(inventory: Inventory, images: [String: PublishedImage] = [:], overlays: [MACAddress: [String]] = [:]) {
        self.inventory = inventory
        self.images = images
        self.overlays = overlays
        renderer = BootRenderer(network: inventory.network)
    }

    /// The plan of a published generation: its images and the overlays it rendered.
    public init(inventory: Inventory, index: PublishIndex) {
        var overlays: [MACAddress: [String]] = [:]
        for entry in index.nodes {
            if let mac = MACAddress(entry.mac), let paths = entry.overlays, !paths.isEmpty { overlays[mac] = paths }
        }
        self.init(inventory: inventory, images: index.images, overlays: overlays)
    }

    /// The HTTP path prefix where a node fetches its secret files (served by `imagebuild serve` only,
    /// to the node itself: see the server's `SecretAdmission`).
    public static let secretsPrefix = "/boot/v1/secrets/"

    public static func secretsPath(_ mac: MACAddress) -> String { secretsPrefix + mac.hyphenated }

    // MARK: - The rule

    /// Which part of the inventory a machine boots by.
    public enum Source: Sendable, Equatable {
        case node(Inventory.Node)
        case range(Inventory.Range)
        case defaults
    }

    /// The settings a machine boots by, and why (steps 1-3 of the rule).
    public struct Choice: Sendable, Equatable {
        public var source: Source
        /// Names the target in generated files: `node001 (52:54:00:…)`, `range 10.0.0.96/28`.
        public var title: String
        /// Why this choice, for the timeline, the log and `explain`.
        public var why: String
        public var resolution: Inventory.Resolution
    }

    /// Steps 1-3 of the rule; nil when the machine is to wait (step 4). A registered node is chosen
    /// even when it resolves to no image, so the answer can say why it waits.
    public func choice(mac: MACAddress, ip: IPv4Address?) -> Choice? {
        if let node = inventory.node(mac: mac) { return choice(node) }
        if let ip, let range = range(containing: ip) {
            return Choice(source: .range(range), title: Self.title(range), why: "unregistered, in range \(range.network)",
                          resolution: inventory.resolved(range))
        }
        return defaultChoice
    }

    public func choice(_ node: Inventory.Node) -> Choice {
        Choice(source: .node(node), title: Self.title(node), why: "registered as \(node.hostname)", resolution: inventory.resolved(node))
    }

    /// Step 3: what a machine no node and no range claims boots; nil when `defaults` names no image.
    public var defaultChoice: Choice? {
        let resolution = inventory.resolve(Inventory.Settings(), group: nil)
        guard resolution.image != nil else { return nil }
        return Choice(source: .defaults, title: "any machine not listed", why: "unregistered, default image", resolution: resolution)
    }

    /// Step 2: the most specific range containing `ip` that names an image (ranges without one are
    /// passed over, as pxelinux's walk passes over the file publish does not write for them).
    public func range(containing ip: IPv4Address) -> Inventory.Range? {
        inventory.ranges
            .filter { $0.network.contains(ip) && inventory.resolved($0).image != nil }
            .max { $0.network.prefix < $1.network.prefix }
    }

    /// The plan's answer for one machine.
    public enum Answer: Sendable, Equatable {
        /// Boot `target`; `why` says which rule chose it.
        case boot(BootTarget, why: String)
        /// Nothing to boot yet: the machine waits and asks again. `reason` is for the node's console.
        case wait(reason: String)
    }

    public func answer(mac: MACAddress, ip: IPv4Address?) -> Answer {
        guard let choice = choice(mac: mac, ip: ip) else { return .wait(reason: "not registered in nodes.yaml") }
        return answer(choice)
    }

    public func answer(_ choice: Choice) -> Answer {
        guard let name = choice.resolution.image else { return .wait(reason: "\(choice.title) has no image in nodes.yaml") }
        guard let image = images[name] else {
            return .wait(reason: "image '\(name)' for \(choice.title) is not published (run imagebuild publish)")
        }
        var target = BootTarget(title: choice.title, image: image, resolution: choice.resolution)
        if case .node(let node) = choice.source {
            let identity = try? inventory.identity(of: node)
            target.overlays = overlays[node.mac] ?? []
            target.secretsPath = identity?.hasSecrets == true ? Self.secretsPath(node.mac) : nil
            target.cloudInitPath = identity?.cloudInit.enabled == true ? CloudInit.seedPath(node.mac) : nil
        }
        return .boot(target, why: choice.why)
    }

    // MARK: - BIOS loaders

    /// What a BIOS machine is handed by DHCP (UEFI machines: `uefiFile(for:)`).
    public struct BIOSBoot: Sendable, Equatable {
        /// The `loader:` setting in force (node > group > defaults); nil: the firmware decides.
        public var loader: Inventory.Loader?
        /// The boot-root file a BIOS firmware's PXE ROM gets.
        public var firmwareFile: String
        /// What an iPXE ROM gets: a boot-root file, or nil for its boot script (the bootscript URL).
        public var ipxeROMFile: String?

        public init(loader: Inventory.Loader?, firmwareFile: String, ipxeROMFile: String?) {
            self.loader = loader
            self.firmwareFile = firmwareFile
            self.ipxeROMFile = ipxeROMFile
        }
    }

    /// The boot-root path of iPXE for BIOS firmware (publish lays it there).
    public static let undionly = "ipxe/undionly.kpxe"

    /// The BIOS boot of `node` (nil: a machine not listed).
    public func biosBoot(for node: Inventory.Node?) -> BIOSBoot {
        let loader = inventory.loader(for: node)
        switch loader {
        case .ipxe: return BIOSBoot(loader: loader, firmwareFile: Self.undionly, ipxeROMFile: nil)
        case .pxelinux: return BIOSBoot(loader: loader, firmwareFile: inventory.pxelinuxLoader, ipxeROMFile: inventory.pxelinuxLoader)
        // GRUB is published as the x86-64 UEFI build only: a BIOS machine boots as if no loader were set.
        case .grub, nil: return BIOSBoot(loader: nil, firmwareFile: defaultBIOSFile, ipxeROMFile: nil)
        }
    }

    // MARK: - UEFI loaders

    /// The boot-root folder of the Secure Boot chain. Debian's `grubnetx64.efi` is built with the prefix
    /// `/grub`, so GRUB reads its configuration from `(tftp,SERVER)/grub/`; shim loads `grubx64.efi`
    /// from the folder it was loaded from itself.
    public static let grubFolder = "grub"
    /// Debian's signed shim (`shim-signed`), the first stage Secure Boot firmware verifies (Microsoft's key).
    public static let shim = grubFolder + "/shimx64.efi"
    /// Debian's signed network GRUB (`grub-efi-amd64-signed`), under the name shim looks for.
    public static let grub = grubFolder + "/grubx64.efi"
    /// Debian's signed arm64 network GRUB, what DHCP hands arm64 UEFI PXE machines (architecture 11):
    /// Debian builds no arm64 iPXE. Its prefix is `/grub` too, so it reads the same `grub.cfg` walk.
    /// Publish lays it from an arm64 image's artifacts (`arm64Loader`).
    public static let arm64GRUB = grubFolder + "/grubaa64.efi"
    /// The arm64 GRUB with HTTP (made by the build with `grub-mkimage`), what DHCP hands arm64 UEFI HTTP
    /// Boot machines (architecture 19) by URL: GRUB then reads the walk from the same server over HTTP.
    public static let arm64HTTPGRUB = grubFolder + "/grubaa64-http.efi"
    /// The module lists GRUB's `normal` reads from `$prefix/arm64-efi/` before `grub.cfg`. Publish lays
    /// them empty (every module the walk needs is built in): over HTTP, Debian's GRUB 2.06 does not go
    /// on after a 404 (seen: no next request for over a minute).
    public static let arm64GRUBModuleLists = ["command.lst", "crypto.lst", "fs.lst", "terminal.lst"].map { grubFolder + "/arm64-efi/" + $0 }

    /// The file an x86-64 UEFI PXE machine is handed (arch 7 or 9, firmware PXE and iPXE ROMs alike) when
    /// the site chose one; nil: the firmware decides (the architecture's standard file, iPXE). HTTP Boot
    /// clients (arch 16) keep iPXE by URL: the chain through shim and GRUB is published for TFTP.
    public func uefiFile(for node: Inventory.Node?) -> String? {
        inventory.loader(for: node) == .grub ? Self.shim : nil
    }

    /// Whether any machine boots through the x86-64 Secure Boot chain (`loader: grub`): publish then lays
    /// shim and GRUB into the root.
    public var usesSecureBootChain: Bool {
        inventory.defaults.loader == .grub || inventory.groups.values.contains { $0.loader == .grub }
            || inventory.nodes.contains { $0.settings.loader == .grub }
    }

    /// Whether any machine boots through GRUB: the Secure Boot chain, or an arm64 image. Publish then
    /// writes the `grub/grub.cfg` walk.
    public var usesGRUB: Bool { usesSecureBootChain || arm64Loader != nil }

    /// The arm64 image whose artifacts' GRUB publish lays at `arm64GRUB`: the first by name of those
    /// nodes.yaml names. One file serves every arm64 machine (DHCP names one per architecture), and
    /// Debian's signed GRUB is the same in every image built from the same suite. Found from the
    /// inventory's image references, not by resolving every node: publish asks several times, and an
    /// inventory can list 10,000 nodes.
    public var arm64Loader: PublishedImage? {
        let named = Set(inventory.imageReferences.map(\.name))
        return images.values.filter { named.contains($0.name) && $0.architecture == .arm64 && $0.loaderFiles != nil }
            .min { $0.name < $1.name }
    }

    /// What publish lays for arm64 machines from `arm64Loader`: (file in the image's folder, boot-root path).
    public var arm64LoaderFiles: [(source: String, target: String)] {
        guard let image = arm64Loader, let grub = Architecture.arm64.networkGRUB, let files = image.loaderFiles else { return [] }
        return [(grub.signedArtifact, Self.arm64GRUB), (grub.httpArtifact, Self.arm64HTTPGRUB)]
            .filter { files.contains($0.0) }.map { (image.path + "/" + $0.0, $0.1) }
    }

    /// Whether `target` boots through GRUB (`grub.cfg` files are written for it): its `loader: grub`,
    /// or an arm64 image, which has no other loader.
    func bootsThroughGRUB(_ target: BootTarget, node: Inventory.Node?) -> Bool {
        target.image.architecture == .arm64 || inventory.loader(for: node) == .grub
    }

    /// What BIOS firmware gets when no `loader:` applies: `network.bios_loader`, as laid out in the root.
    public var defaultBIOSFile: String {
        inventory.network.biosLoader == "undionly.kpxe" ? Self.undionly : inventory.network.biosLoader
    }

    // MARK: - The swarm

    /// The choice of every target: the default, each range, each node.
    private var allChoices: [Choice] {
        var choices = [defaultChoice].compactMap { $0 }
        choices += inventory.ranges.map { Choice(source: .range($0), title: Self.title($0), why: "", resolution: inventory.resolved($0)) }
        return choices + inventory.nodes.map(choice)
    }

    /// Every target that boots, for plan-wide answers.
    private var bootingTargets: [BootTarget] {
        allChoices.compactMap { choice in
            if case .boot(let target, _) = answer(choice) { return target }
            return nil
        }
    }

    /// The images some machine fetches from the swarm (`distribution: p2p`): publish writes their
    /// torrents, and the server tracks only those.
    public var swarmImages: [PublishedImage] {
        var seen = Set<String>()
        return bootingTargets.filter { $0.torrentPath != nil }.map(\.image).filter { seen.insert($0.path).inserted }
            .sorted { $0.path < $1.path }
    }

    /// Machines said to be of one architecture (`arch:`) whose image is of another, located where the
    /// architecture was said.
    public func architectureProblems() -> [ConfigError] {
        var errors: [ConfigError] = []
        var reported = Set<String>()
        for choice in allChoices {
            guard let arch = choice.resolution.arch, let name = choice.resolution.image, let image = images[name],
                  image.architecture != arch else { continue }
            let location = choice.resolution.archLocation ?? ConfigLocation(file: inventory.file, line: 0, column: 0)
            guard reported.insert("\(location)|\(name)").inserted else { continue }
            errors.append(ConfigError(location, "\(choice.title) is \(arch), but its image '\(name)' is built for \(image.architecture)",
                                      hint: "point it at an \(arch) image (a recipe with 'arch: \(arch)'), or correct 'arch:'"))
        }
        return errors
    }

    /// `distribution: p2p` where it cannot work, located where it was set: a node seeds the file it
    /// mounted, so the image must be squashfs or erofs, and its stage 1 must carry the client.
    public func distributionProblems() -> [ConfigError] {
        var errors: [ConfigError] = []
        var reported = Set<String>()
        for choice in allChoices {
            guard choice.resolution.distribution == .p2p, let name = choice.resolution.image, let image = images[name] else { continue }
            let location = choice.resolution.distributionLocation ?? ConfigLocation(file: inventory.file, line: 0, column: 0)
            guard reported.insert("\(location)|\(name)").inserted else { continue }
            if !image.isMounted {
                errors.append(ConfigError(location, "distribution: p2p for \(choice.title): image '\(name)' is \(image.imageFile.dropFirst("image.".count)), which stage 1 unpacks and cannot seed",
                                          hint: "build it with image.format: squashfs (or erofs)"))
            } else if image.p2pClient == nil {
                errors.append(ConfigError(location, "distribution: p2p for \(choice.title): image '\(name)' has no BitTorrent client in its initramfs",
                                          hint: "add 'p2p: true' under initramfs in its recipe and rebuild (apt-get install aria2)"))
            }
        }
        return errors
    }

    // MARK: - Files

    /// The pxelinux names publish writes for a node: its MAC, then its fixed address in hex.
    public static func pxelinuxNames(_ node: Inventory.Node) -> [String] {
        ["pxelinux.cfg/\(node.mac.pxelinuxName)"] + (node.ip.map { ["pxelinux.cfg/\($0.hex)"] } ?? [])
    }

    public static func ipxeScriptPath(_ mac: MACAddress) -> String { "ipxe/nodes/\(mac.hyphenated).ipxe" }

    /// The GRUB file publish writes for a node: its per-MAC name (the first `grubLookupOrder` tries
    /// after the entry point).
    public static func grubNames(_ node: Inventory.Node) -> [String] {
        [grubFolder + "/grub.cfg-" + node.mac.pxelinuxName]
    }

    static func title(_ node: Inventory.Node) -> String { "\(node.hostname) (\(node.mac))" }
    static func title(_ range: Inventory.Range) -> String { "range \(range.network)" }

    /// The boot configuration of a generation: every file (path relative to the generation, text) in
    /// the order publish writes them, and the index that describes them. Nodes and ranges whose image
    /// is not among `images` get no file (publish refuses such an inventory before it gets here).
    public func files(generation: Int) -> (files: [(path: String, text: String)], index: PublishIndex) {
        var files: [(path: String, text: String)] = []
        let defaultTarget = defaultChoice.flatMap { choice -> BootTarget? in
            if case .boot(let target, _) = answer(choice) { return target }
            return nil
        }
        files.append(("pxelinux.cfg/default", defaultTarget.map(renderer.pxelinuxConfig) ?? renderer.pxelinuxUnregistered()))
        files.append(("ipxe/default.ipxe", defaultTarget.map(renderer.ipxeScript) ?? renderer.ipxeUnregistered()))
        files.append(("ipxe/boot.ipxe", renderer.bootIPXE(bootScriptURL: inventory.network.httpBase + Self.bootScriptPath)))
        // GRUB reads only `grub/grub.cfg`: the entry point holds the walk (`grubLookupOrder`), which ends
        // in `grub.cfg-default` as pxelinux's ends in `default`.
        if usesGRUB {
            files.append((Self.grubFolder + "/grub.cfg", renderer.grubEntry()))
            files.append((Self.grubFolder + "/grub.cfg-default", defaultTarget.map { renderer.grubConfig($0, mac: nil) } ?? renderer.grubUnregistered()))
        }

        var ranges: [PublishIndex.RangeEntry] = []
        for range in inventory.ranges {
            let choice = Choice(source: .range(range), title: Self.title(range), why: "", resolution: inventory.resolved(range))
            guard case .boot(let target, _) = answer(choice) else { continue }
            files.append(("pxelinux.cfg/\(range.pxelinuxName)", renderer.pxelinuxConfig(target)))
            ranges.append(.init(cidr: range.network.description, image: target.image.name, digest: target.image.digest,
                                pxelinux: "pxelinux.cfg/\(range.pxelinuxName)"))
        }
        // GRUB cannot walk hex prefixes: a range reaches the machines not listed that boot through GRUB
        // as one file per pool address in it (DHCP gives those machines pool addresses only).
        if usesGRUB, let pool = inventory.network.pool {
            for address in pool {
                guard let range = range(containing: address) else { continue }
                let choice = Choice(source: .range(range), title: Self.title(range), why: "", resolution: inventory.resolved(range))
                guard case .boot(let target, _) = answer(choice), bootsThroughGRUB(target, node: nil) else { continue }
                files.append(("\(Self.grubFolder)/grub.cfg-\(address)", renderer.grubConfig(target, mac: nil)))
            }
        }
        var nodes: [PublishIndex.NodeEntry] = []
        for node in inventory.nodes {
            guard case .boot(let target, _) = answer(choice(node)) else { continue }
            let config = renderer.pxelinuxConfig(target)
            let names = Self.pxelinuxNames(node)
            for name in names { files.append((name, config)) }
            let script = Self.ipxeScriptPath(node.mac)
            files.append((script, renderer.ipxeScript(target)))
            let grubNames = bootsThroughGRUB(target, node: node) ? Self.grubNames(node) : []
            if !grubNames.isEmpty {
                let config = renderer.grubConfig(target, mac: node.mac)
                for name in grubNames { files.append((name, config)) }
            }
            nodes.append(.init(mac: node.mac.description, hostname: node.hostname, ip: node.ip?.description,
                               image: target.image.name, digest: target.image.digest, pxelinux: names, ipxe: script,
                               overlays: target.overlays.isEmpty ? nil : target.overlays, secrets: target.secretsPath,
                               cloudInit: target.cloudInitPath, grub: grubNames.isEmpty ? nil : grubNames, torrent: target.torrentPath))
        }
        let index = PublishIndex(generation: generation, images: images, defaultImage: defaultTarget?.image.name, nodes: nodes, ranges: ranges)
        return (files, index)
    }
}
