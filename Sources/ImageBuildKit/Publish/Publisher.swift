import Foundation

public enum PublishError: Error, CustomStringConvertible {
    case missingBootloader(file: String, package: String)
    case badArtifact(String)
    case unmanaged(String)
    case nothingToRollBack(String)
    case busy(String)

    public var description: String {
        switch self {
        case .missingBootloader(let file, let package): return "\(file) is missing: apt-get install \(package)"
        case .badArtifact(let m), .unmanaged(let m), .nothingToRollBack(let m), .busy(let m): return m
        }
    }
}

/// The `publish.json` index: which image version each node boots.
public struct PublishIndex: Codable, Sendable, Equatable {
    public struct NodeEntry: Codable, Sendable, Equatable {
        public var mac: String
        public var hostname: String
        public var ip: String?
        public var image: String
        public var digest: String
        public var pxelinux: [String]
        public var ipxe: String
        /// Overlay archives laid over the node's root, in order (`OverlayPlan`); nil: none.
        public var overlays: [String]?
        /// The HTTP path of the node's secrets, served by `imagebuild serve` only; nil: none.
        public var secrets: String?
        /// The node's cloud-init seed path (`ds=` on its command line); nil: cloud-init is off.
        public var cloudInit: String? = nil
        /// The node's GRUB configuration files (`loader: grub`); nil: it does not boot through GRUB.
        public var grub: [String]? = nil
        /// The torrent its command line names (`distribution: p2p`); nil: it fetches over HTTP.
        public var torrent: String? = nil
    }
    public struct RangeEntry: Codable, Sendable, Equatable {
        public var cidr: String
        public var image: String
        public var digest: String
        public var pxelinux: String
    }
    public var generation: Int
    public var images: [String: PublishedImage]
    public var defaultImage: String?
    public var nodes: [NodeEntry]
    public var ranges: [RangeEntry]

    public static func read(root: String) throws -> PublishIndex {
        try JSONDecoder().decode(PublishIndex.self, from: Data(contentsOf: URL(fileURLWithPath: root + "/publish.json")))
    }
}

/// Lays artifacts and boot configuration into a boot root.
///
/// Layout: images are content-addressed and immutable (`images/<name>/<digest>/`);
/// everything else a node fetches (boot loaders, pxelinux.cfg, iPXE scripts,
/// publish.json) lives in a generation folder `.publish/gen-N/`, reached
/// through `.publish/current` and stable top-level symlinks (`pxelinux.cfg ->
/// .publish/current/pxelinux.cfg`). A publish writes and fsyncs a whole new
/// generation, then switches `current` with one rename: killed at any point
/// before that, the root is exactly as it was; after it, it is wholly new.
public struct Publisher: Sendable {
    public let root: String
    public let inventory: Inventory
    public var keep: Int = 3

    public init(root: String, inventory: Inventory, keep: Int = 3) {
        self.root = URL(fileURLWithPath: root).standardizedFileURL.path
        self.inventory = inventory
        self.keep = max(1, keep)
    }

    /// Boot files from Debian's packages: (source, name in the root, package).
    public static let bootloaders: [(source: String, target: String, package: String)] = {
        var list: [(String, String, String)] = [
            ("/usr/lib/PXELINUX/pxelinux.0", "boot/pxelinux.0", "pxelinux"),
            ("/usr/lib/PXELINUX/lpxelinux.0", "boot/lpxelinux.0", "pxelinux"),
            ("/usr/lib/ipxe/undionly.kpxe", BootPlan.undionly, "ipxe"),
            ("/usr/lib/ipxe/ipxe.efi", "ipxe/ipxe.efi", "ipxe"),
            ("/usr/lib/ipxe/snponly.efi", "ipxe/snponly.efi", "ipxe"),
        ]
        // ldlinux.c32 is required; the rest are the com32 modules configs commonly use.
        for module in ["ldlinux.c32", "libcom32.c32", "libutil.c32", "menu.c32", "vesamenu.c32", "reboot.c32", "chain.c32", "poweroff.c32"] {
            list.append(("/usr/lib/syslinux/modules/bios/\(module)", "boot/\(module)", "syslinux-common"))
        }
        return list
    }()

    /// The Secure Boot chain (`loader: grub`), laid only when some machine boots through it, so a site
    /// without it needs neither package: Debian's signed shim and signed network GRUB, as published.
    public static let secureBootLoaders: [(source: String, target: String, package: String)] = [
        ("/usr/lib/shim/shimx64.efi.signed", BootPlan.shim, "shim-signed"),
        ("/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed", BootPlan.grub, "grub-efi-amd64-signed"),
    ]

    /// A point a test may kill publish at (`FaultInjection`, `IMAGEBUILD_FAULT=publish:<point>`).
    func checkpoint(_ point: String) { FaultInjection.crash(at: "publish:" + point) }

    var publishDir: String { root + "/.publish" }

    static func currentGeneration(_ publishDir: String) -> Int? {
        guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: publishDir + "/current") else { return nil }
        return Int(target.replacingOccurrences(of: "gen-", with: ""))
    }

    static func generations(_ publishDir: String) -> [Int] {
        ((try? FileManager.default.contentsOfDirectory(atPath: publishDir)) ?? [])
            .compactMap { $0.hasPrefix("gen-") ? Int($0.dropFirst(4)) : nil }.sorted()
    }

    public func currentGeneration() -> Int? { Self.currentGeneration(publishDir) }
    func generations() -> [Int] { Self.generations(publishDir) }

    /// Publishes `artifacts` (folders with a manifest.json) for the inventory.
    /// Images the inventory names but that are not given are taken from the
    /// current generation, so one image can be updated at a time. Every image of the new generation is
    /// served from the boot root (an image an earlier publish put in a store is fetched from the root again).
    ///
    /// Nothing on disk changes until every check has passed (artifacts against their manifests, the
    /// inventory against the images): a publish that fails leaves every generation, including those
    /// newer than `current` after a rollback, as it was.
    @discardableResult
    public func publish(artifacts: [String]) throws -> PublishIndex {
        let staged = try stage(artifacts: artifacts)
        defer { staged.lock.release() }
        return try finish(staged, images: staged.images.mapValues { image in
            var image = image
            image.storeURL = nil
            return image
        })
    }

    /// Publishes as `publish(artifacts:)` does, with every image file of the new generation also in
    /// `store`, and the boot configuration (stage 1's `imagebuild.image=`, the torrents' web seeds)
    /// pointing there. The boot root keeps its whole copy: the loaders fetch kernel and initramfs from
    /// it, and it is what is uploaded and what a publish without a store serves again.
    ///
    /// Atomic as the other: every image is stored and verified before the generation is written, so a
    /// failure or a kill during an upload leaves `current`, and what the nodes boot, as it was. Objects
    /// are never deleted: the store is content-addressed (`images/<name>/<digest>/`), so an object a
    /// kept generation boots is never overwritten either.
    @discardableResult
    public func publish(artifacts: [String], store: any ImageStore) async throws -> PublishIndex {
        let staged = try stage(artifacts: artifacts)
        defer { staged.lock.release() }
        var images = staged.images
        for name in images.keys.sorted() {
            let image = images[name]!
            guard let sha256 = image.sha256 else {
                throw PublishError.badArtifact("image '\(name)' \(image.digest): its command line has no imagebuild.sha256 to verify the store's copy by; rebuild it")
            }
            let file = root + "/" + image.path + "/" + image.imageFile
            let size: Int64
            do { size = try (FileManager.default.attributesOfItem(atPath: file)[.size] as? NSNumber)?.int64Value ?? 0 } catch {
                throw PublishError.badArtifact("\(file): cannot be read (\(error)); publish its artifacts again")
            }
            let object = StoreObject(key: image.path + "/" + image.imageFile, file: file, size: size, sha256: sha256)
            images[name]!.storeURL = try await store.put(object) { self.checkpoint("store-part-stored") }
        }
        return try finish(staged, images: images)
    }

    /// What `stage` leaves for `finish`: the lock on the root (held until the switch is done), the
    /// images of the new generation, and the rendered overlays.
    struct Staged {
        let lock: PublishLock
        let history: GenerationHistory
        let images: [String: PublishedImage]
        let overlays: OverlayPlan
    }

    /// Steps 1 and 2 of a publish: every check, then the root's lock and the images copied into the
    /// root (content-addressed: only new versions are written, and no generation points at them yet).
    func stage(artifacts: [String]) throws -> Staged {
        // 1. Artifacts: verified against their manifests before anything is created or copied.
        var sources: [String: (dir: String, image: PublishedImage)] = [:]
        for dir in artifacts {
            let manifest: Manifest
            do { manifest = try Manifest.read(from: dir) } catch {
                throw PublishError.badArtifact("\(dir): no readable manifest.json (is it an artifacts/<name> folder?)")
            }
            for (name, info) in manifest.files {
                let actual: (digest: String, size: Int64)
                do { actual = try sha256File(dir + "/" + name) } catch {
                    throw PublishError.badArtifact("\(dir)/\(name): listed in manifest.json but unreadable (\(error)); rebuild it")
                }
                guard actual.digest == info.sha256 else {
                    throw PublishError.badArtifact("\(dir)/\(name): sha256 does not match manifest.json (changed or half-copied); rebuild it")
                }
            }
            let image = PublishedImage(manifest: manifest)
            sources[image.name] = (dir, image)
        }
        /// The images the new generation can boot: the current ones, with the given ones replaced.
        func merged() throws -> [String: PublishedImage] {
            var images = (try? PublishIndex.read(root: root))?.images ?? [:]
            for (name, source) in sources { images[name] = source.image }
            try inventory.checkImages(Set(images.keys))
            return images
        }
        // An inventory naming an unknown image, or a swarm no node could seed, fails here, before anything is created.
        let plan = BootPlan(inventory: inventory, images: try merged())
        try ConfigErrors.throwIfAny(plan.architectureProblems() + plan.distributionProblems())
        // Node files: every template renders and every secret is in place, before anything is created.
        try NodeFileChecks.check(inventory, root: root)
        let overlays = try OverlayPlan.render(inventory, mtime: Self.overlayEpoch)

        try FileManager.default.createDirectory(atPath: publishDir, withIntermediateDirectories: true)
        let lock = try PublishLock(path: publishDir + "/lock")
        do {
            let history = GenerationHistory(publishDir: publishDir)
            try history.recordCurrent()
            var images = try merged()  // again under the lock: another publish may have switched meanwhile
            let used = Set(inventory.imageReferences.map(\.name))
            images = images.filter { used.contains($0.key) || sources[$0.key] != nil }

            // 2. Images, content-addressed: an existing digest folder is already right.
            for (name, source) in sources.sorted(by: { $0.key < $1.key }) {
                let (dir, image) = source
                let target = root + "/" + image.path
                if FileManager.default.fileExists(atPath: target + "/" + Manifest.fileName) { continue }
                let staging = root + "/images/\(name)/.\(image.digest).tmp-\(getpid())"
                try? SafeFileSystem.removeTree(staging)
                try FileManager.default.createDirectory(atPath: staging, withIntermediateDirectories: true)
                for file in ["vmlinuz", "initramfs.img", image.imageFile, "cmdline", Manifest.fileName] + (image.loaderFiles ?? []) {
                    try Tool.run(["cp", "--reflink=auto", "--", dir + "/" + file, staging + "/" + file])
                    try SafeFileSystem.fsyncFile(staging + "/" + file)
                }
                SafeFileSystem.fsyncDirectory(staging)
                checkpoint("image-copied")
                if rename(staging, target) != 0 { throw RootfsError.system(operation: "rename to", path: target, errno: errno) }
                SafeFileSystem.fsyncDirectory(root + "/images/\(name)")
            }
            checkpoint("images-done")
            return Staged(lock: lock, history: history, images: images, overlays: overlays)
        } catch {
            lock.release()
            throw error
        }
    }

    /// Steps 3 to 5: the new generation written aside, the one switch, then garbage collection.
    func finish(_ staged: Staged, images: [String: PublishedImage]) throws -> PublishIndex {
        let history = staged.history
        // 3. A whole new generation, aside.
        let number = (generations().last ?? 0) + 1
        let generation = publishDir + "/gen-\(number)"
        let staging = publishDir + "/.gen-\(number).tmp-\(getpid())"
        try? SafeFileSystem.removeTree(staging)
        let index = try writeGeneration(into: staging, number: number, images: images, overlays: staged.overlays)
        checkpoint("generation-written")
        if rename(staging, generation) != 0 { throw RootfsError.system(operation: "rename to", path: generation, errno: errno) }
        SafeFileSystem.fsyncDirectory(publishDir)

        // 4. Stable top-level links (created once), then the one switch.
        try ensureTopLevelLinks()
        checkpoint("before-switch")
        let previous = currentGeneration()
        try switchCurrent(to: number)
        checkpoint("after-switch")
        try history.recordCurrent()
        history.log(.publish, from: previous, to: number, images: images)

        // 5. Old generations and unreferenced images go.
        try collectGarbage(history: history)
        return index
    }

    /// Which way `switch` moves `current` among the generations that were served before.
    public enum Direction: Sendable {
        /// To the newest served generation older than `current` (`publish --rollback`).
        case back
        /// To the oldest served generation newer than `current` (`publish --forward`): undoes a rollback.
        case forward
    }

    /// Points `current` at the previous (or, after a rollback, the next) generation that was served
    /// before. Generations a killed publish wrote but never switched to are skipped. Returns the
    /// generation now served.
    @discardableResult
    public static func switchGeneration(root: String, _ direction: Direction) throws -> Int {
        let publishDir = URL(fileURLWithPath: root).standardizedFileURL.path + "/.publish"
        guard FileManager.default.fileExists(atPath: publishDir) else { throw PublishError.nothingToRollBack("\(root) has nothing published") }
        let lock = try PublishLock(path: publishDir + "/lock")
        defer { lock.release() }
        guard let current = currentGeneration(publishDir) else { throw PublishError.nothingToRollBack("\(root) has nothing published") }
        let history = GenerationHistory(publishDir: publishDir)
        try history.recordCurrent()
        let served = history.served()
        let target: Int
        switch direction {
        case .back:
            guard let previous = served.last(where: { $0 < current }) else {
                throw PublishError.nothingToRollBack("\(root): generation \(current) is the oldest kept; nothing to roll back to")
            }
            target = previous
        case .forward:
            guard let next = served.first(where: { $0 > current }) else {
                throw PublishError.nothingToRollBack("\(root): generation \(current) is the newest; nothing to roll forward to (only a rollback can be undone)")
            }
            target = next
        }
        try switchCurrent(publishDir, to: target)
        let images = (try? PublishIndex.read(root: root))?.images ?? [:]
        history.log(direction == .back ? .rollback : .forward, from: current, to: target, images: images)
        return target
    }

    /// The switch log of a boot root, one line per switch, oldest first: time, action, generations,
    /// images.
    public static func history(root: String) -> [String] {
        GenerationHistory.read(publishDir: URL(fileURLWithPath: root).standardizedFileURL.path + "/.publish")
    }

    /// `publish --rollback`.
    @discardableResult
    public static func rollback(root: String) throws -> Int { try switchGeneration(root: root, .back) }

    func switchCurrent(to number: Int) throws { try Self.switchCurrent(publishDir, to: number) }

    static func switchCurrent(_ publishDir: String, to number: Int) throws {
        let temporary = publishDir + "/.current.tmp-\(getpid())"
        unlink(temporary)
        guard symlink("gen-\(number)", temporary) == 0 else { throw RootfsError.system(operation: "symlink", path: temporary, errno: errno) }
        guard rename(temporary, publishDir + "/current") == 0 else {
            throw RootfsError.system(operation: "rename to", path: publishDir + "/current", errno: errno)
        }
        SafeFileSystem.fsyncDirectory(publishDir)
    }

    /// The mtime of overlay entries: `SOURCE_DATE_EPOCH`, else 0, so a publish is reproducible.
    /// Read with getenv: the server makes a secrets archive per request, and `ProcessInfo`'s
    /// environment is a new dictionary each time.
    public static var overlayEpoch: Int64 { getenv("SOURCE_DATE_EPOCH").flatMap { Int64(String(cString: $0)) } ?? 0 }

    func writeGeneration(into dir: String, number: Int, images: [String: PublishedImage], overlays: OverlayPlan) throws -> PublishIndex {
        let fm = FileManager.default
        for sub in ["pxelinux.cfg", "ipxe/nodes", "boot", BootPlan.grubFolder, OverlayPlan.folder, Torrent.folder] { try fm.createDirectory(atPath: dir + "/" + sub, withIntermediateDirectories: true) }
        func write(_ relative: String, _ text: String) throws {
            try SafeFileSystem.writeFile(dir + "/" + relative, text.utf8)
        }
        let plan = BootPlan(inventory: inventory, images: images, overlays: overlays.nodes)
        for loader in Self.bootloaders + (plan.usesSecureBootChain ? Self.secureBootLoaders : []) {
            guard fm.fileExists(atPath: loader.source) else { throw PublishError.missingBootloader(file: loader.source, package: loader.package) }
            try Tool.run(["cp", "--", loader.source, dir + "/" + loader.target])
        }
        // arm64's GRUBs, from the image that carries them (this machine's packages cannot), and the
        // module lists GRUB reads first, empty.
        let arm64Loaders = plan.arm64LoaderFiles
        if !arm64Loaders.isEmpty {
            try fm.createDirectory(atPath: dir + "/" + BootPlan.grubFolder + "/arm64-efi", withIntermediateDirectories: true)
            for file in BootPlan.arm64GRUBModuleLists { try write(file, "") }
        }
        for loader in arm64Loaders {
            try Tool.run(["cp", "--", root + "/" + loader.source, dir + "/" + loader.target])
        }
        let (files, index) = plan.files(generation: number)
        for file in files { try write(file.path, file.text) }
        for archive in overlays.archives.values.sorted(by: { $0.path < $1.path }) {
            try SafeFileSystem.writeFile(dir + "/" + archive.path, archive.bytes)
        }
        // The swarm's torrents: the pieces' hashes are the image's own (computed once, kept beside it),
        // the tracker this generation's server, the web seed wherever nodes fetch the image over HTTP.
        let base = inventory.network.httpBase
        for image in plan.swarmImages {
            let info = try Torrent.info(ofImageIn: root + "/" + image.path, imageFile: image.imageFile)
            try SafeFileSystem.writeFile(dir + "/" + Torrent.path(of: image),
                                         Torrent.file(info: info, announce: base + Torrent.announcePath,
                                                      webSeed: image.imageURL(httpBase: base), sha256: image.sha256))
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        try write("publish.json", String(decoding: try encoder.encode(index), as: UTF8.self) + "\n")
        checkpoint("generation-files")
        // Every file and folder of the generation on disk before the switch can point at it.
        try SafeFileSystem.syncFileSystem(containing: dir)
        return index
    }

    /// Top-level names a node fetches, as symlinks into the current generation.
    static let topLevel: [(name: String, target: String)] = {
        var links = [("pxelinux.cfg", ".publish/current/pxelinux.cfg"), ("ipxe", ".publish/current/ipxe"),
                     (BootPlan.grubFolder, ".publish/current/\(BootPlan.grubFolder)"),
                     ("publish.json", ".publish/current/publish.json"), (OverlayPlan.folder, ".publish/current/\(OverlayPlan.folder)"),
                     (Torrent.folder, ".publish/current/\(Torrent.folder)")]
        for loader in bootloaders where loader.target.hasPrefix("boot/") {
            let name = String(loader.target.dropFirst(5))
            links.append((name, ".publish/current/boot/\(name)"))
        }
        return links
    }()

    func ensureTopLevelLinks() throws {
        for link in Self.topLevel {
            let path = root + "/" + link.name
            if let existing = try? FileManager.default.destinationOfSymbolicLink(atPath: path) {
                if existing == link.target { continue }
            } else if FileManager.default.fileExists(atPath: path) {
                throw PublishError.unmanaged("\(path) exists and is not managed by imagebuild (not a link into .publish/); move it away and publish again")
            }
            let temporary = root + "/.\(link.name).tmp-\(getpid())"
            unlink(temporary)
            guard symlink(link.target, temporary) == 0, rename(temporary, path) == 0 else {
                throw RootfsError.system(operation: "link", path: path, errno: errno)
            }
        }
        SafeFileSystem.fsyncDirectory(root)
    }

    /// Keeps the newest `keep` generations that were served (and the current one) and the images they
    /// use. Generations never served (written by a publish killed before its switch) go. Called only
    /// after a successful switch, so a failed publish removes nothing.
    func collectGarbage(history: GenerationHistory) throws {
        let all = generations()
        let current = currentGeneration()
        let kept = Set(history.served().suffix(keep) + (current.map { [$0] } ?? []))
        for number in all where !kept.contains(number) {
            try SafeFileSystem.removeTree(publishDir + "/gen-\(number)")
        }
        var referenced = Set<String>()
        for number in kept {
            if let data = try? Data(contentsOf: URL(fileURLWithPath: publishDir + "/gen-\(number)/publish.json")),
               let index = try? JSONDecoder().decode(PublishIndex.self, from: data) {
                for image in index.images.values { referenced.insert(image.path) }
            }
        }
        let imagesDir = root + "/images"
        for name in (try? FileManager.default.contentsOfDirectory(atPath: imagesDir)) ?? [] {
            for digest in (try? FileManager.default.contentsOfDirectory(atPath: imagesDir + "/" + name)) ?? [] {
                let relative = "images/\(name)/\(digest)"
                if digest.hasPrefix(".") || !referenced.contains(relative) {
                    // Staging folders of a publish that died, and versions no kept generation boots.
                    if digest.hasPrefix("."), let pid = Int32(digest.split(separator: "-").last ?? ""), kill(pid, 0) == 0 { continue }
                    try SafeFileSystem.removeTree(imagesDir + "/" + relative.dropFirst("images/".count))
                }
            }
        }
        for name in (try? FileManager.default.contentsOfDirectory(atPath: publishDir)) ?? [] where name.hasPrefix(".") {
            try? SafeFileSystem.removeTree(publishDir + "/" + name)
        }
    }
}

/// An exclusive lock on the boot root, so two publishes never interleave.
final class PublishLock {
    let fd: Int32
    init(path: String) throws {
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        if fd < 0 { throw RootfsError.system(operation: "open", path: path, errno: errno) }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            close(fd)
            throw PublishError.busy("another publish is running on this root (\(path)); wait for it")
        }
    }
    func release() { flock(fd, LOCK_UN); close(fd) }
}

/// Which generations were ever served, and a log of every switch.
///
/// A generation becomes history only once `current` pointed at it: a publish killed between writing
/// its generation and switching leaves a whole generation that nobody ever booted, and a rollback must
/// not land there. Each served generation holds a `.served` marker, written right after the switch
/// (and by the next publish or rollback if a kill came in between, since `current` is always served).
/// Every switch appends a line to `.publish/history.jsonl`: when, what, from which generation to which,
/// and the images it boots.
struct GenerationHistory {
    let publishDir: String

    enum Action: String { case publish, rollback, forward }

    private func marker(_ number: Int) -> String { publishDir + "/gen-\(number)/.served" }

    /// Marks the current generation as served. A root published before markers existed has none:
    /// then every generation up to the current one counts as served, as it was then.
    func recordCurrent() throws {
        guard let current = Publisher.currentGeneration(publishDir) else { return }
        let all = Publisher.generations(publishDir)
        let legacy = !all.contains { FileManager.default.fileExists(atPath: marker($0)) }
        for number in all where number == current || (legacy && number < current) {
            guard !FileManager.default.fileExists(atPath: marker(number)) else { continue }
            guard FileManager.default.createFile(atPath: marker(number), contents: nil) else {
                throw RootfsError.system(operation: "create", path: marker(number), errno: errno)
            }
            SafeFileSystem.fsyncDirectory(publishDir + "/gen-\(number)")
        }
    }

    /// Generations on disk that were served, oldest first.
    func served() -> [Int] {
        Publisher.generations(publishDir).filter { FileManager.default.fileExists(atPath: marker($0)) }
    }

    /// Appends one line to the history log. Best effort: the switch has happened, and a full disk
    /// must not turn a done publish into a reported failure.
    func log(_ action: Action, from: Int?, to: Int, images: [String: PublishedImage], now: Date = Date()) {
        struct Line: Encodable {
            var time: String, action: String, from: Int?, to: Int, images: [String: String]
        }
        let formatter = ISO8601DateFormatter()
        let line = Line(time: formatter.string(from: now), action: action.rawValue, from: from, to: to,
                        images: images.mapValues(\.digest))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        guard var data = try? encoder.encode(line) else { return }
        data.append(0x0A)
        let fd = open(publishDir + "/history.jsonl", O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return }
        defer { close(fd) }
        _ = data.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    }

    /// The log's lines, oldest first (for `publish --history`).
    static func read(publishDir: String) -> [String] {
        guard let text = try? String(contentsOfFile: publishDir + "/history.jsonl", encoding: .utf8) else { return [] }
        return text.split(separator: "\n").map(String.init)
    }
}
