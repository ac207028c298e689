import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Everything a set of executables needs from a root to run: the
/// executables, their interpreter and shared libraries, and every symbolic
/// link on the way, as paths inside the root.
///
/// Invariant: no entry's parent directories pass through a symbolic link
/// (a link met on the way is itself an entry), so a writer can create parent
/// directories as plain directories and the links as they are, in any order.
public struct ELFClosure: Sendable, Equatable {
    public enum Entry: Sendable, Hashable, Comparable, CustomStringConvertible {
        /// A regular file at this path inside the root.
        case file(path: String)
        /// A symbolic link at `path`, with its target as stored (absolute
        /// targets are relative to the root).
        case symlink(path: String, target: String)

        public var path: String {
            switch self {
            case .file(let path), .symlink(let path, _): return path
            }
        }

        public var description: String {
            switch self {
            case .file(let path): return path
            case .symlink(let path, let target): return "\(path) -> \(target)"
            }
        }

        public static func < (a: Entry, b: Entry) -> Bool { a.path < b.path }
    }

    /// One DT_NEEDED (or PT_INTERP) edge, for reports and debugging.
    public struct Dependency: Sendable, Hashable {
        public let name: String
        public let neededBy: String
        /// Where it was found, as searched (may be a symlink).
        public let path: String
        /// The regular file that path leads to.
        public let file: String
    }

    /// Files and symlinks, sorted by path, each once.
    public let entries: [Entry]
    /// Every resolved edge, in discovery order.
    public let dependencies: [Dependency]

    public var files: [String] {
        entries.compactMap { if case .file(let path) = $0 { return path } else { return nil } }
    }

    public var symlinks: [(path: String, target: String)] {
        entries.compactMap { if case .symlink(let path, let target) = $0 { return (path, target) } else { return nil } }
    }

    /// The file `path` leads to using only the closure's own entries (chroot
    /// semantics), or nil if the closure alone does not provide it. Lets a
    /// caller or test check that the closure is self-contained.
    public func lookup(_ path: String) -> String? {
        var links: [String: String] = [:]
        var files: Set<String> = []
        for entry in entries {
            switch entry {
            case .file(let path): files.insert(path)
            case .symlink(let path, let target): links[path] = target
            }
        }
        var pending = RootedTree.components(path)
        var resolved: [String] = []
        var hops = 0
        while !pending.isEmpty {
            let part = pending.removeFirst()
            if part == "." { continue }
            if part == ".." { _ = resolved.popLast(); continue }
            let candidate = "/" + (resolved + [part]).joined(separator: "/")
            if let target = links[candidate] {
                hops += 1
                if hops > RootedTree.maxLinks { return nil }
                if target.hasPrefix("/") { resolved = [] }
                pending = RootedTree.components(target) + pending
            } else {
                resolved.append(part)
            }
        }
        let final = "/" + resolved.joined(separator: "/")
        return files.contains(final) ? final : nil
    }
}

/// Computes shared-library closures inside a root (a rootfs being built, or
/// "/" for the host) without running anything from it: no `ldd`, no chroot.
///
/// The search follows glibc's ld.so for each DT_NEEDED name without a slash:
/// DT_RPATH of the object and of the objects that loaded it (only when the
/// object has no DT_RUNPATH), then the object's DT_RUNPATH, then the
/// directories of the root's `/etc/ld.so.conf` (with `include` globs, as
/// ldconfig reads them into ld.so.cache), then the defaults `/lib/<triplet>`,
/// `/usr/lib/<triplet>`, `/lib64`, `/usr/lib64` (64-bit), `/lib`, `/usr/lib`.
/// `$ORIGIN` expands to the object's directory; an entry with another token
/// (`$LIB`, `$PLATFORM`) is skipped. A candidate of another class, byte order
/// or machine is skipped, as ld.so does. LD_LIBRARY_PATH and glibc-hwcaps
/// subdirectories are not used: an image has neither at build time.
public struct ELFDependencies: Sendable {
    /// Host path of the root.
    public let root: String
    private var tree: RootedTree
    private var objects: [String: ELFObject] = [:]
    private var configDirectories: [String]?

    public init(root: String) {
        self.root = root
        self.tree = RootedTree(root: root)
    }

    /// The closure of `executables` (paths inside the root, e.g. "/bin/busybox").
    public mutating func closure(of executables: [String]) throws(ELFDependencyError) -> ELFClosure {
        var entries: Set<ELFClosure.Entry> = []
        var edges: [ELFClosure.Dependency] = []
        var seenEdges: Set<ELFClosure.Dependency> = []
        for executable in executables {
            guard let resolved = try tree.resolve(executable) else {
                throw .notFound(path: executable, root: root)
            }
            entries.formUnion(resolved.entries)
            let main = try object(at: resolved.path)
            // Objects already mapped into this process, by DT_NEEDED name or
            // SONAME, as ld.so matches them; per executable, since RPATHs differ.
            var loaded: [String: String] = [:]
            var queue: [(path: String, origin: String, object: ELFObject, chain: [Loader])] = []
            var visited: Set<String> = [resolved.path]
            queue.append((resolved.path, Self.directory(of: resolved.path), main, []))
            if let interpreter = main.interpreter {
                guard let found = try tree.resolve(interpreter) else {
                    throw .libraryNotFound(name: interpreter, neededBy: executable, searched: [interpreter])
                }
                entries.formUnion(found.entries)
                let object = try object(at: found.path)
                let edge = ELFClosure.Dependency(name: interpreter, neededBy: resolved.path, path: interpreter, file: found.path)
                if seenEdges.insert(edge).inserted { edges.append(edge) }
                loaded[(interpreter as NSString).lastPathComponent] = found.path
                if let soname = object.soname { loaded[soname] = found.path }
                if visited.insert(found.path).inserted {
                    queue.append((found.path, Self.directory(of: interpreter), object, []))
                }
            }
            var next = 0
            while next < queue.count {
                let (path, origin, object, chain) = queue[next]
                next += 1
                for name in object.needed {
                    if let already = loaded[name] {
                        let edge = ELFClosure.Dependency(name: name, neededBy: path, path: already, file: already)
                        if seenEdges.insert(edge).inserted { edges.append(edge) }
                        continue
                    }
                    let (foundPath, resolution) = try find(name, for: object, origin: origin, chain: chain, neededBy: path)
                    entries.formUnion(resolution.entries)
                    let library = try self.object(at: resolution.path)
                    loaded[name] = resolution.path
                    if let soname = library.soname { loaded[soname] = resolution.path }
                    let edge = ELFClosure.Dependency(name: name, neededBy: path, path: foundPath, file: resolution.path)
                    if seenEdges.insert(edge).inserted { edges.append(edge) }
                    if visited.insert(resolution.path).inserted {
                        queue.append((resolution.path, Self.directory(of: foundPath), library, chain + [Loader(object: object, origin: origin)]))
                    }
                }
            }
        }
        return ELFClosure(entries: entries.sorted(), dependencies: edges)
    }

    // MARK: - Search

    /// An object that loaded the one being searched for, with its $ORIGIN.
    struct Loader { let object: ELFObject; let origin: String }

    private mutating func find(
        _ name: String, for object: ELFObject, origin: String, chain: [Loader], neededBy: String
    ) throws(ELFDependencyError) -> (String, RootedTree.Resolution) {
        if name.contains("/") {
            // A DT_NEEDED with a slash is a path; relative ones are taken from "/".
            let path = name.hasPrefix("/") ? name : "/" + name
            guard let found = try tree.resolve(path), Self.identity(tree.hostPath(found.path), matches: object) else {
                throw .libraryNotFound(name: name, neededBy: neededBy, searched: [path])
            }
            return (path, found)
        }
        var directories: [String] = []
        if object.runpath == nil {
            // DT_RPATH of the object, then of its loaders up to the executable.
            directories += Self.expand(object.rpath, origin: origin)
            for loader in chain.reversed() where loader.object.runpath == nil {
                directories += Self.expand(loader.object.rpath, origin: loader.origin)
            }
        }
        directories += Self.expand(object.runpath ?? [], origin: origin)
        directories += try searchDirectories()
        for triplet in object.multiarchTriplets {
            directories += ["/lib/\(triplet)", "/usr/lib/\(triplet)"]
        }
        if object.elfClass == .elf64 { directories += ["/lib64", "/usr/lib64"] }
        directories += ["/lib", "/usr/lib"]

        var tried: Set<String> = []
        var searched: [String] = []
        for directory in directories where tried.insert(directory).inserted {
            searched.append(directory)
            let candidate = (directory == "/" ? "" : directory) + "/" + name
            guard let found = try tree.resolve(candidate) else { continue }
            guard Self.identity(tree.hostPath(found.path), matches: object) else { continue }
            return (candidate, found)
        }
        throw .libraryNotFound(name: name, neededBy: neededBy, searched: searched)
    }

    private static func identity(_ hostPath: String, matches object: ELFObject) -> Bool {
        guard let (elfClass, little, machine) = ELFObject.readIdentity(path: hostPath) else { return false }
        return elfClass == object.elfClass && little == object.littleEndian && machine == object.machine
    }

    /// Expands `$ORIGIN` / `${ORIGIN}`; drops entries with other tokens and empty ones.
    static func expand(_ entries: [String], origin: String) -> [String] {
        entries.compactMap { entry in
            let expanded = entry.replacingOccurrences(of: "${ORIGIN}", with: origin)
                .replacingOccurrences(of: "$ORIGIN", with: origin)
            guard !expanded.isEmpty, !expanded.contains("$") else { return nil }
            return expanded.hasPrefix("/") ? expanded : nil
        }
    }

    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { return "/" }
        return String(path[..<slash])
    }

    private mutating func object(at path: String) throws(ELFDependencyError) -> ELFObject {
        if let cached = objects[path] { return cached }
        let object = try ELFObject.read(path: tree.hostPath(path))
        objects[path] = object
        return object
    }

    // MARK: - ld.so.conf

    /// The directories of the root's /etc/ld.so.conf, in order, each once.
    public mutating func searchDirectories() throws(ELFDependencyError) -> [String] {
        if let configDirectories { return configDirectories }
        var directories: [String] = []
        var visited: Set<String> = []
        try readConfig("/etc/ld.so.conf", into: &directories, visited: &visited, depth: 0)
        var seen: Set<String> = []
        let unique = directories.filter { seen.insert($0).inserted }
        configDirectories = unique
        return unique
    }

    private mutating func readConfig(
        _ path: String, into directories: inout [String], visited: inout Set<String>, depth: Int
    ) throws(ELFDependencyError) {
        guard depth < 16, let resolved = try tree.resolve(path), visited.insert(resolved.path).inserted else { return }
        let data: [UInt8]
        do {
            let file = try PositionalFile(path: tree.hostPath(resolved.path))
            data = try file.read(at: 0, count: min(file.size, 1 << 20))
        } catch {
            throw .unreadable(path: tree.hostPath(resolved.path), reason: error.message)
        }
        let base = Self.directory(of: path)
        for raw in data.split(separator: UInt8(ascii: "\n")) {
            var line = Substring(decoding: raw, as: UTF8.self)
            if let hash = line.firstIndex(of: "#") { line = line[..<hash] }
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" })
            guard let first = words.first else { continue }
            if first == "include" {
                for pattern in words.dropFirst() {
                    let absolute = pattern.hasPrefix("/") ? String(pattern) : base + "/" + pattern
                    for file in try tree.glob(absolute) {
                        try readConfig(file, into: &directories, visited: &visited, depth: depth + 1)
                    }
                }
            } else if first == "hwcap" {
                continue
            } else {
                for word in words {
                    for part in word.split(whereSeparator: { $0 == ":" || $0 == "," }) {
                        var directory = String(part)
                        // ldconfig allows "dir=TYPE"; the type does not matter here.
                        if let equals = directory.firstIndex(of: "=") { directory = String(directory[..<equals]) }
                        while directory.count > 1 && directory.hasSuffix("/") { directory.removeLast() }
                        if directory.hasPrefix("/") { directories.append(directory) }
                    }
                }
            }
        }
    }
}

/// Paths inside a root with chroot semantics: an absolute symlink target
/// starts again at the root, ".." stops at the root, so nothing resolves
/// outside it. Every link met is reported so it can be recreated.
struct RootedTree: Sendable {
    struct Resolution: Sendable {
        /// The final path inside the root, with no symlink in it.
        let path: String
        /// The links met on the way, and the final file.
        let entries: [ELFClosure.Entry]
    }

    static let maxLinks = 40

    let root: String
    private var cache: [String: Resolution?] = [:]

    init(root: String) {
        var root = root
        while root.count > 1 && root.hasSuffix("/") { root.removeLast() }
        self.root = root == "/" ? "" : root
    }

    func hostPath(_ inside: String) -> String { root + inside }

    static func components(_ path: String) -> [String] {
        path.split(separator: "/" as Character).map(String.init)
    }

    /// Resolves `path` to a regular file inside the root; nil if it does not
    /// exist or is not a regular file. Throws only on a symlink loop.
    mutating func resolve(_ path: String) throws(ELFDependencyError) -> Resolution? {
        if let cached = cache[path] { return cached }
        let result = try walk(path, wantDirectory: false)
        cache[path] = result
        return result
    }

    private func walk(_ path: String, wantDirectory: Bool) throws(ELFDependencyError) -> Resolution? {
        var pending = Self.components(path)
        var resolved: [String] = []
        var entries: [ELFClosure.Entry] = []
        var hops = 0
        var info = stat()
        while !pending.isEmpty {
            let part = pending.removeFirst()
            if part == "." { continue }
            if part == ".." { _ = resolved.popLast(); continue }
            let inside = "/" + (resolved + [part]).joined(separator: "/")
            guard lstat(root + inside, &info) == 0 else { return nil }
            switch info.st_mode & S_IFMT {
            case S_IFLNK:
                hops += 1
                guard hops <= Self.maxLinks else { throw .symlinkLoop(path: path, root: root.isEmpty ? "/" : root) }
                guard let target = Self.readLink(root + inside) else { return nil }
                entries.append(.symlink(path: inside, target: target))
                if target.hasPrefix("/") { resolved = [] }
                pending = Self.components(target) + pending
            case S_IFDIR:
                resolved.append(part)
            case S_IFREG:
                guard pending.isEmpty || pending.allSatisfy({ $0 == "." }) else { return nil }
                resolved.append(part)
            default:
                return nil
            }
        }
        let final = "/" + resolved.joined(separator: "/")
        guard lstat(root + final, &info) == 0 else { return nil }
        let isDirectory = info.st_mode & S_IFMT == S_IFDIR
        guard isDirectory == wantDirectory, isDirectory || info.st_mode & S_IFMT == S_IFREG else { return nil }
        if !isDirectory { entries.append(.file(path: final)) }
        return Resolution(path: final, entries: entries)
    }

    static func readLink(_ hostPath: String) -> String? {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink(hostPath, &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Files matching a pattern whose last component may hold wildcards
    /// ("/etc/ld.so.conf.d/*.conf"), sorted, as paths inside the root.
    func glob(_ pattern: String) throws(ELFDependencyError) -> [String] {
        let directory = ELFDependencies.directory(of: pattern)
        let name = String(pattern[pattern.index(after: pattern.lastIndex(of: "/")!)...])
        guard let resolved = try walk(directory, wantDirectory: true) else { return [] }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root + resolved.path)) ?? []
        let prefix = resolved.path == "/" ? "" : resolved.path
        return names.filter { !$0.hasPrefix(".") && fnmatch(name, $0, 0) == 0 }.sorted().map { prefix + "/" + $0 }
    }
}
