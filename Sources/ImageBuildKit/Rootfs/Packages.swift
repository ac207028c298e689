import Foundation

/// A Debian binary package unpacked with libarchive: no dpkg, no root, no
/// maintainer scripts (enough for busybox-style systems and kernel packages).
public struct DebPackage {
    public let path: String
    public init(path: String) { self.path = path }

    /// Unpacks `data.tar.*` into the tree.
    public func extract(into tree: RootfsTree) throws {
        guard let data = try dataArchive().reader else {
            throw ArchiveError(path: path, message: "not a Debian package: no data.tar member")
        }
        try tree.extract(archive: data, source: path)
    }

    /// The package's `data.tar.*` member as an archive of its own, and the members read up to it (the
    /// last is data.tar's name; without a data.tar the reader is nil and all members are listed).
    ///
    /// The member is spooled to an unlinked temporary file rather than held in memory: a kernel
    /// package's is ~70 MB compressed, and libarchive reads one archive at a time.
    public func dataArchive() throws -> (reader: ArchiveReader?, members: [String]) {
        let outer = try ArchiveReader(path: path)
        var members: [String] = []
        while let header = try outer.next() {
            members.append(header.path)
            guard header.path.hasPrefix("data.tar") else { continue }
            let spool = try SpoolFile()
            try outer.readData { chunk in try spool.write(chunk) }
            try spool.finish()
            // Opened before the spool goes out of scope and unlinks its name: the reader holds the file.
            return (try ArchiveReader(path: spool.path, name: "\(path)!\(header.path)"), members)
        }
        return (nil, members)
    }
}

/// Fetches packages and their dependency closure with `apt-get download`,
/// which needs neither root nor a dpkg database. Essential packages are not
/// pulled in implicitly: name what the image needs.
struct AptDownloader {
    let scratch: String

    func download(_ packages: [String], progress: (String) -> Void) throws -> [String] {
        progress("resolving \(packages.joined(separator: " ")) with apt")
        let output = try Tool.run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
                                   "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances",
                                   "--no-pre-depends"] + packages)
        // Lines without leading blanks are package names; virtual ones look like "<name>".
        var names = Set(output.split(separator: "\n").filter { !$0.hasPrefix(" ") && !$0.hasPrefix("<") }.map(String.init))
        names.formUnion(packages)
        let folder = scratch + "/debs"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        progress("downloading \(names.count) packages")
        try Tool.run(["apt-get", "download", "-q"] + names.sorted(), directory: folder)
        return try FileManager.default.contentsOfDirectory(atPath: folder).filter { $0.hasSuffix(".deb") }.sorted().map { folder + "/" + $0 }
    }
}

/// An OCI image layout or `docker save` archive: layers applied in order,
/// whiteouts (`.wh.name`, `.wh..wh..opq`) honoured as the OCI image spec says.
///
/// The archive is unpacked into a staging tree, and every file it names (index.json, blobs by digest,
/// docker's layer paths) is looked up inside that tree the way `RootfsTree.resolve` does, and must be a
/// regular file: a digest such as `sha256:../../x`, a layer path `../x` or a symlinked blob cannot
/// make the build read a file of the host into the image, and a FIFO cannot block the build.
struct OCIArchive {
    let path: String
    let scratch: String

    /// A file of the unpacked archive that the archive named.
    struct Member {
        /// The name as the archive gave it (for errors: `image.tar!blobs/sha256/ab12...`).
        let name: String
        /// Where it is in the staging tree.
        let hostPath: String
    }

    func apply(to tree: RootfsTree, progress: (String) -> Void) throws {
        let folder = scratch + "/oci"
        progress("reading \(path)")
        let staging = try RootfsTree(root: folder)
        try staging.extract(archive: try ArchiveReader(path: path), source: path)
        let layers = try layerFiles(in: staging)
        for (index, layer) in layers.enumerated() {
            progress("applying layer \(index + 1)/\(layers.count)")
            let source = "\(path)!\(layer.name)"
            // Pass 1: whiteouts remove what lower layers put there.
            let scan = try ArchiveReader(path: layer.hostPath, name: source)
            while let header = try scan.next() {
                let member = try RootfsTree.memberPath(header.path, source: source)
                let name = (member as NSString).lastPathComponent
                let parent = (member as NSString).deletingLastPathComponent
                if name == ".wh..wh..opq" {
                    let inner = try tree.resolve(parent, followLast: true)
                    if tree.fileType(inner) == S_IFDIR {
                        for child in try FileManager.default.contentsOfDirectory(atPath: tree.hostPath(inner)) {
                            try tree.removeTree((inner == "/" ? "" : inner) + "/" + child)
                        }
                    }
                } else if name.hasPrefix(".wh.") {
                    let hidden = String(name.dropFirst(4))
                    // ".wh..." would remove the folder holding the tree, ".wh.." the tree itself.
                    guard !hidden.isEmpty, hidden != ".", hidden != ".." else {
                        throw ArchiveError(path: source, message: "whiteout '\(header.path)' names no file; the layer is corrupt")
                    }
                    try tree.remove((parent == "/" ? "" : parent) + "/" + hidden)
                }
            }
            // Pass 2: the layer's own entries.
            try tree.extract(archive: try ArchiveReader(path: layer.hostPath, name: source), source: source) { member, _ in
                !(member as NSString).lastPathComponent.hasPrefix(".wh.")
            }
        }
    }

    /// Layer files in application order, from `index.json` (OCI) or `manifest.json` (docker save).
    func layerFiles(in staging: RootfsTree) throws -> [Member] {
        func json(_ member: Member) throws -> Any {
            let data: Data
            do {
                data = try Data(contentsOf: URL(fileURLWithPath: member.hostPath))
            } catch {
                throw ArchiveError(path: path, message: "cannot read \(member.name): \((error as NSError).localizedDescription)")
            }
            do {
                return try JSONSerialization.jsonObject(with: data)
            } catch {
                throw ArchiveError(path: path, message: "\(member.name) is not valid JSON")
            }
        }
        if try exists("index.json", in: staging) {
            guard let index = try json(try member("index.json", in: staging)) as? [String: Any],
                  let manifests = index["manifests"] as? [[String: Any]], let first = manifests.first,
                  let digest = first["digest"] as? String else {
                throw ArchiveError(path: path, message: "index.json lists no manifest")
            }
            var manifest = try json(try blob(digest, in: staging)) as? [String: Any]
            // An image index (multi-platform): take the linux/amd64 entry, else the first.
            if let nested = manifest?["manifests"] as? [[String: Any]] {
                let pick = nested.first { (($0["platform"] as? [String: Any])?["architecture"] as? String) == "amd64" } ?? nested.first
                if let d = pick?["digest"] as? String {
                    manifest = try json(try blob(d, in: staging)) as? [String: Any]
                }
            }
            guard let layers = manifest?["layers"] as? [[String: Any]] else {
                throw ArchiveError(path: path, message: "the image manifest lists no layers")
            }
            return try layers.map { layer in
                guard let digest = layer["digest"] as? String else {
                    throw ArchiveError(path: path, message: "a layer of the image manifest has no digest")
                }
                return try blob(digest, in: staging)
            }
        }
        if try exists("manifest.json", in: staging),
           let manifest = try json(try member("manifest.json", in: staging)) as? [[String: Any]],
           let layers = manifest.first?["Layers"] as? [String] {
            return try layers.map { try member($0, in: staging) }
        }
        throw ArchiveError(path: path, message: "neither an OCI layout (index.json) nor a docker save archive (manifest.json)")
    }

    /// The blob a digest names. The OCI image spec's grammar (`algorithm:encoded`, letters, digits and a
    /// few separators) leaves no room for a path.
    func blob(_ digest: String, in staging: RootfsTree) throws -> Member {
        let parts = digest.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
        func alphanumeric(_ c: Character) -> Bool { c.isASCII && (c.isLowercase || c.isNumber) }
        guard parts.count == 2, let first = parts[0].first, let last = parts[0].last, alphanumeric(first), alphanumeric(last),
              parts[0].allSatisfy({ alphanumeric($0) || "+._-".contains($0) }),
              !parts[1].isEmpty, parts[1].allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "=_-".contains($0)) }) else {
            throw ArchiveError(path: path, message: "malformed digest '\(digest)' (expected algorithm:hex, e.g. sha256:1f2e...)")
        }
        return try member("blobs/\(parts[0])/\(parts[1])", in: staging)
    }

    func exists(_ name: String, in staging: RootfsTree) throws -> Bool {
        staging.fileType(try staging.resolve(try memberPath(name), followLast: true)) != nil
    }

    /// A file the archive names, looked up inside the staging tree (symlinks followed as in a chroot of
    /// it); it must be a regular file.
    func member(_ name: String, in staging: RootfsTree) throws -> Member {
        let inner = try staging.resolve(try memberPath(name), followLast: true)
        switch staging.fileType(inner) {
        case S_IFREG:
            return Member(name: name, hostPath: staging.hostPath(inner))
        case nil:
            throw ArchiveError(path: path, message: "\(name) is not in the archive")
        default:
            throw ArchiveError(path: path, message: "\(name) is not a regular file in the archive")
        }
    }

    func memberPath(_ name: String) throws -> String {
        do { return try RootfsTree.memberPath(name, source: path) } catch {
            throw ArchiveError(path: path, message: "'\(name)' names a file outside the archive")
        }
    }
}
