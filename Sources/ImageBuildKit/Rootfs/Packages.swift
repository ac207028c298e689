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
struct OCIArchive {
    let path: String
    let scratch: String

    func apply(to tree: RootfsTree, progress: (String) -> Void) throws {
        let folder = scratch + "/oci"
        progress("reading \(path)")
        let staging = try RootfsTree(root: folder)
        try staging.extract(archive: try ArchiveReader(path: path), source: path)
        let layers = try layerFiles(in: folder)
        for (index, layer) in layers.enumerated() {
            progress("applying layer \(index + 1)/\(layers.count)")
            // Pass 1: whiteouts remove what lower layers put there.
            let scan = try ArchiveReader(path: layer)
            while let header = try scan.next() {
                let member = try RootfsTree.memberPath(header.path, source: layer)
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
                    try tree.remove((parent == "/" ? "" : parent) + "/" + String(name.dropFirst(4)))
                }
            }
            // Pass 2: the layer's own entries.
            try tree.extract(archive: try ArchiveReader(path: layer), source: layer) { member, _ in
                !(member as NSString).lastPathComponent.hasPrefix(".wh.")
            }
        }
    }

    /// Layer files in application order, from `index.json` (OCI) or `manifest.json` (docker save).
    func layerFiles(in folder: String) throws -> [String] {
        func json(_ relative: String) throws -> Any {
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: folder + "/" + relative)))
        }
        func blob(_ digest: String) -> String {
            let parts = digest.split(separator: ":", maxSplits: 1)
            return folder + "/blobs/\(parts.first ?? "")/\(parts.last ?? "")"
        }
        if FileManager.default.fileExists(atPath: folder + "/index.json") {
            guard let index = try json("index.json") as? [String: Any],
                  let manifests = index["manifests"] as? [[String: Any]], let first = manifests.first,
                  let digest = first["digest"] as? String else {
                throw ArchiveError(path: path, message: "index.json lists no manifest")
            }
            var manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: blob(digest)))) as? [String: Any]
            // An image index (multi-platform): take the linux/amd64 entry, else the first.
            if let nested = manifest?["manifests"] as? [[String: Any]] {
                let pick = nested.first { (($0["platform"] as? [String: Any])?["architecture"] as? String) == "amd64" } ?? nested.first
                if let d = pick?["digest"] as? String {
                    manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: blob(d)))) as? [String: Any]
                }
            }
            guard let layers = manifest?["layers"] as? [[String: Any]] else {
                throw ArchiveError(path: path, message: "the image manifest lists no layers")
            }
            return layers.compactMap { ($0["digest"] as? String).map(blob) }
        }
        if FileManager.default.fileExists(atPath: folder + "/manifest.json"),
           let manifest = try json("manifest.json") as? [[String: Any]], let layers = manifest.first?["Layers"] as? [String] {
            return layers.map { folder + "/" + $0 }
        }
        throw ArchiveError(path: path, message: "neither an OCI layout (index.json) nor a docker save archive (manifest.json)")
    }
}
