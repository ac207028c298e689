import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Turns kernel module names into the ordered list of module files the
/// initramfs must carry and load, from a `/lib/modules/<version>` directory
/// of any root (a rootfs being built, or the host).
///
/// It reads the text files depmod writes, with kmod's semantics:
/// - `modules.dep`: `path: dep-path dep-path ...`, each line already the full
///   closure, listed so that loading from the last to the first works.
/// - `modules.builtin`: modules compiled into the kernel. Asking for one is
///   fine, there is just nothing to load.
/// - `modules.alias`: `alias <pattern> <module>`; a requested name that is
///   not a module may be an alias, if it names exactly one module.
/// - `modules.softdep`: `softdep <module> pre: a b post: c`; "pre:" modules
///   load before the module. kmod 30 honours only the first line per module
///   (kmod issue #33, fixed upstream to merge them); the kernel emits one
///   line per MODULE_SOFTDEP, so this resolver merges every line, as the
///   authors meant. Missing soft dependencies are skipped, as modprobe does.
/// - `modules.builtin.modinfo`: aliases of built-in modules, so an alias of
///   a built-in (e.g. `crypto-crc32c` on some kernels) counts as built in.
///
/// `-` and `_` are the same in module names (the kernel normalises them).
/// File names are kept as they are, including `.ko.xz` / `.ko.zst`.
public struct ModuleResolver: Sendable {
    /// The modules directory, e.g. `<root>/lib/modules/6.1.0-56-amd64`; nil
    /// when built from strings.
    public let directory: URL?
    /// The directory's last component, the kernel release.
    public let kernelVersion: String
    let index: ModuleIndex

    /// Reads the metadata of a modules directory. Needs `modules.dep`; the
    /// other files are optional (treated as empty when absent).
    public init(modulesDirectory: URL) throws(ModuleResolverError) {
        func load(_ name: String, required: Bool) throws(ModuleResolverError) -> [UInt8] {
            let path = modulesDirectory.appendingPathComponent(name).path
            do {
                let file = try PositionalFile(path: path)
                return try file.read(at: 0, count: file.size)
            } catch {
                if !required && error.code == ENOENT { return [] }
                throw .unreadable(path: path, reason: error.message)
            }
        }
        let dir = modulesDirectory.path
        self.directory = modulesDirectory
        self.kernelVersion = modulesDirectory.lastPathComponent
        self.index = try ModuleIndex(
            directory: dir,
            dep: try load("modules.dep", required: true),
            builtin: try load("modules.builtin", required: false),
            alias: try load("modules.alias", required: false),
            softdep: try load("modules.softdep", required: false),
            order: try load("modules.order", required: false),
            builtinModinfo: try load("modules.builtin.modinfo", required: false))
    }

    /// Builds a resolver from file contents (tests, or metadata read from an
    /// archive). `source` stands for the directory in errors.
    public init(
        kernelVersion: String, modulesDep: String, modulesBuiltin: String = "", modulesAlias: String = "",
        modulesSoftdep: String = "", modulesOrder: String = "", builtinModinfo: [UInt8] = [],
        source: String = "<modules>"
    ) throws(ModuleResolverError) {
        self.directory = nil
        self.kernelVersion = kernelVersion
        self.index = try ModuleIndex(
            directory: source, dep: Array(modulesDep.utf8), builtin: Array(modulesBuiltin.utf8),
            alias: Array(modulesAlias.utf8), softdep: Array(modulesSoftdep.utf8), order: Array(modulesOrder.utf8),
            builtinModinfo: builtinModinfo)
    }

    /// Resolves `names` (module names or unambiguous aliases) to a load order:
    /// for each name in turn, its dependencies (deepest first) and "pre:" soft
    /// dependencies, then the module; every module once. With a directory,
    /// every module file is checked to exist.
    public func resolve(_ names: [String]) throws(ModuleResolverError) -> ModuleResolution {
        var walk = ModuleWalk(index: index)
        for raw in names {
            switch try walk.lookupRequested(raw) {
            case .module(let id):
                try walk.visit(id)
            case .builtIn(let name):
                walk.note(.builtIn(name: name, requestedAs: raw))
            }
        }
        if let directory {
            for id in walk.order {
                let path = directory.appendingPathComponent(index.modules[id].path).path
                if access(path, F_OK) != 0 { throw .moduleFileMissing(path: path) }
            }
        }
        return index.resolution(kernelVersion: kernelVersion, order: walk.order, skipped: walk.skipped)
    }
}

/// The outcome of `ModuleResolver.resolve`: what to copy, what to load, and
/// the trimmed metadata so `modprobe` works inside the initramfs too.
public struct ModuleResolution: Sendable, Equatable {
    public struct Module: Sendable, Equatable {
        /// Normalised name (`_` for `-`): "virtio_net".
        public let name: String
        /// Path relative to the modules directory: "kernel/drivers/net/virtio_net.ko".
        public let path: String
    }

    /// Something asked for or implied that needs no file, with the reason.
    public enum Skip: Sendable, Equatable, CustomStringConvertible {
        /// Built into the kernel: nothing to load.
        case builtIn(name: String, requestedAs: String)
        /// A "pre:" soft dependency that names no module (modprobe skips it too).
        case softDependencyNotFound(name: String, neededBy: String)
        /// A soft dependency that would close a loop; the edge is dropped, as kmod does.
        case softDependencyCycle(name: String, neededBy: String)

        public var description: String {
            switch self {
            case .builtIn(let name, let requestedAs):
                return requestedAs == name ? "\(name): built into the kernel" : "\(requestedAs) (\(name)): built into the kernel"
            case .softDependencyNotFound(let name, let neededBy):
                return "\(name): soft dependency of \(neededBy) not found, skipped"
            case .softDependencyCycle(let name, let neededBy):
                return "\(name): soft dependency of \(neededBy) would form a cycle, skipped"
            }
        }
    }

    /// One metadata file for `/lib/modules/<version>/` in the initramfs.
    public struct MetadataFile: Sendable, Equatable {
        public let name: String
        public let contents: String
    }

    public let kernelVersion: String
    /// Modules in load order, dependencies first, each once.
    public let modules: [Module]
    public let skipped: [Skip]
    /// `modules.dep` lines of the chosen modules, verbatim, in the original order.
    public let modulesDep: String
    /// `modules.builtin`, whole: it is small (a few KB) and lets `modprobe X`
    /// for a built-in X succeed instead of failing with "not found".
    public let modulesBuiltin: String
    /// `modules.order` lines of the chosen modules, in the original order.
    public let modulesOrder: String
    /// `modules.alias` lines that name a chosen module, so `modprobe <modalias>`
    /// (from mdev/udev or by hand) finds the drivers that are present.
    public let modulesAlias: String
    /// `modules.softdep` lines of the chosen modules (kmod reads it; busybox ignores it).
    public let modulesSoftdep: String

    /// Module files to copy, relative to the modules directory, in load order.
    public var files: [String] { modules.map(\.path) }

    /// `/modules.txt` for the stage-1 init: one absolute in-initramfs path per
    /// line, in load order, so `/init` can `insmod` each line without knowing
    /// the kernel version. Empty when nothing needs loading.
    public var modulesTxt: String {
        modules.map { "/lib/modules/\(kernelVersion)/\($0.path)\n" }.joined()
    }

    /// The metadata files to write next to the modules.
    public var metadataFiles: [MetadataFile] {
        [
            MetadataFile(name: "modules.dep", contents: modulesDep),
            MetadataFile(name: "modules.builtin", contents: modulesBuiltin),
            MetadataFile(name: "modules.order", contents: modulesOrder),
            MetadataFile(name: "modules.alias", contents: modulesAlias),
            MetadataFile(name: "modules.softdep", contents: modulesSoftdep),
        ]
    }
}

// MARK: - Index (pure)

/// The parsed metadata of one modules directory. The files are ASCII and
/// parsed as bytes; modules.alias (~30 000 lines, 1.3 MB on Debian) is only
/// indexed when a name actually needs an alias lookup (`AliasIndex`).
struct ModuleIndex: Sendable {
    struct Entry: Sendable {
        let name: String
        let path: String
        /// Dependency module ids, in modules.dep order (load from the last).
        var deps: [Int]
        /// The line's byte range in `depText`, for the trimmed modules.dep.
        let line: Range<Int>
    }

    let directory: String
    private(set) var modules: [Entry] = []
    private(set) var byName: [String: Int] = [:]
    private(set) var builtIn: Set<String> = []
    let builtinText: String
    let depText: [UInt8]
    let aliasText: [UInt8]
    let builtinModinfo: [UInt8]
    private(set) var softPre: [String: [String]] = [:]
    private(set) var softdepLines: [(module: String, line: String)] = []
    private(set) var orderPaths: [String] = []

    init(directory: String, dep: [UInt8], builtin: [UInt8], alias: [UInt8], softdep: [UInt8], order: [UInt8], builtinModinfo: [UInt8]) throws(ModuleResolverError) {
        self.directory = directory
        self.builtinText = String(decoding: builtin, as: UTF8.self)
        self.depText = dep
        self.aliasText = alias
        self.builtinModinfo = builtinModinfo

        // modules.dep: "path: dep dep ...". Dependencies are looked up by
        // their path bytes first (one hash, no string), by name as a fallback.
        let depPath = directory + "/modules.dep"
        var byPath: [ArraySlice<UInt8>: Int] = [:]
        var pending: [[ArraySlice<UInt8>]] = []
        for (number, line) in Self.byteLines(dep) {
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else {
                throw .malformedLine(path: depPath, line: number, text: Self.text(line), reason: "no ':' after the module path")
            }
            let path = line[line.startIndex..<colon]
            guard !path.isEmpty, !path.contains(0x20), !path.contains(0x09) else {
                throw .malformedLine(path: depPath, line: number, text: Self.text(line), reason: "empty or spaced module path")
            }
            let name = Self.moduleName(path)
            guard byName[name] == nil else { continue }
            byName[name] = modules.count
            byPath[path] = modules.count
            modules.append(Entry(name: name, path: Self.text(path), deps: [], line: line.startIndex..<line.endIndex))
            pending.append(Self.fields(line[(colon + 1)...]))
        }
        for (id, depPaths) in pending.enumerated() {
            var ids: [Int] = []
            ids.reserveCapacity(depPaths.count)
            for depPath in depPaths {
                guard let dep = byPath[depPath] ?? byName[Self.moduleName(depPath)] else {
                    throw .missingDependency(module: modules[id].name, dependency: Self.text(depPath), directory: directory)
                }
                ids.append(dep)
            }
            modules[id].deps = ids
        }

        for (_, line) in Self.byteLines(builtin) {
            builtIn.insert(Self.moduleName(line))
        }

        let softPath = directory + "/modules.softdep"
        for (number, line) in Self.byteLines(softdep) {
            let fields = Self.fields(line).map(Self.text)
            guard fields.count >= 2, fields[0] == "softdep" else {
                throw .malformedLine(path: softPath, line: number, text: Self.text(line), reason: "expected 'softdep <module> pre: ... post: ...'")
            }
            let module = Self.normaliseName(fields[1])
            softdepLines.append((module, Self.text(line)))
            // Tokens before "pre:"/"post:" belong to neither list (kmod ignores them).
            var inPre = false
            for token in fields.dropFirst(2) {
                switch token {
                case "pre:": inPre = true
                case "post:": inPre = false
                default: if inPre { softPre[module, default: []].append(token) }
                }
            }
        }

        orderPaths = Self.byteLines(order).map { Self.text($0.1) }
    }

    // MARK: Byte helpers

    static func text(_ bytes: ArraySlice<UInt8>) -> String { String(decoding: bytes, as: UTF8.self) }

    /// Non-empty, non-comment lines, right-trimmed, with 1-based numbers.
    static func byteLines(_ bytes: [UInt8]) -> [(Int, ArraySlice<UInt8>)] {
        // memchr finds the line ends: this runs over modules.alias on every
        // resolve, and byte-wise Swift loops are slow in debug builds.
        let ranges: [(Int, Range<Int>)] = bytes.withUnsafeBufferPointer { buffer in
            guard let base = buffer.baseAddress else { return [] }
            var result: [(Int, Range<Int>)] = []
            var number = 0
            var start = 0
            while start < buffer.count {
                number += 1
                let found: UnsafeMutableRawPointer? = memchr(base + start, 0x0A, buffer.count - start)
                let end = found.map { UnsafeRawPointer($0) - UnsafeRawPointer(base) } ?? buffer.count
                var last = end
                while last > start && (base[last - 1] == 0x20 || base[last - 1] == 0x09 || base[last - 1] == 0x0D) { last -= 1 }
                if last > start && base[start] != UInt8(ascii: "#") {
                    result.append((number, start..<last))
                }
                start = end + 1
            }
            return result
        }
        return ranges.map { ($0.0, bytes[$0.1]) }
    }

    static func fields(_ line: ArraySlice<UInt8>) -> [ArraySlice<UInt8>] {
        line.split(whereSeparator: { $0 == 0x20 || $0 == 0x09 })
    }

    /// "kernel/net/core/failover.ko.zst" -> "failover"; "crc32c-intel" -> "crc32c_intel".
    static func moduleName(_ path: ArraySlice<UInt8>) -> String {
        let start = path.lastIndex(of: UInt8(ascii: "/")).map { $0 + 1 } ?? path.startIndex
        let end = path[start...].firstIndex(of: UInt8(ascii: ".")) ?? path.endIndex
        return normaliseName(path[start..<end])
    }

    static func normaliseName(_ name: ArraySlice<UInt8>) -> String {
        name.contains(UInt8(ascii: "-")) ? String(decoding: name.map { $0 == 0x2D ? 0x5F : $0 }, as: UTF8.self) : text(name)
    }

    static func normaliseName(_ name: String) -> String {
        normaliseName(Array(name.utf8)[...])
    }

    /// kmod's alias normalisation: `-` becomes `_` except inside `[...]`.
    /// Also tells whether the alias holds fnmatch wildcards.
    static func normaliseAlias(_ alias: ArraySlice<UInt8>) -> (String, wildcard: Bool) {
        var inBracket = false
        var wildcard = false
        var out = [UInt8]()
        out.reserveCapacity(alias.count)
        for byte in alias {
            switch byte {
            case UInt8(ascii: "["): inBracket = true; wildcard = true; out.append(byte)
            case UInt8(ascii: "]"): inBracket = false; out.append(byte)
            case UInt8(ascii: "*"), UInt8(ascii: "?"): wildcard = true; out.append(byte)
            case UInt8(ascii: "-") where !inBracket: out.append(UInt8(ascii: "_"))
            default: out.append(byte)
            }
        }
        return (String(decoding: out, as: UTF8.self), wildcard)
    }

    // MARK: Lookups

    /// Up to three known names closest to `name`, for the "did you mean"
    /// hint: names it is a prefix of first ("mlx5" -> "mlx5_core"), then by
    /// edit distance.
    func suggestions(for name: String) -> [String] {
        let query = Array(name.utf8)
        let limit = max(2, query.count / 3)
        var scored: [(Int, Int, String)] = []
        for candidate in Set(modules.map(\.name)).union(builtIn) {
            let bytes = Array(candidate.utf8)
            let isPrefix = query.count >= 3 && bytes.starts(with: query)
            guard let distance = editDistance(query, bytes, limit: isPrefix ? Int.max : limit) else { continue }
            scored.append((isPrefix ? 0 : 1, distance, candidate))
        }
        return scored.sorted { ($0.0, $0.1, $0.2) < ($1.0, $1.1, $1.2) }.prefix(3).map(\.2)
    }

    func resolution(kernelVersion: String, order: [Int], skipped: [ModuleResolution.Skip]) -> ModuleResolution {
        let chosen = Set(order)
        let chosenNames = Set(order.map { modules[$0].name })
        let chosenPaths = Set(order.map { modules[$0].path })
        func text(_ lines: [String]) -> String { lines.map { $0 + "\n" }.joined() }
        // modules.alias lines whose last field is a chosen module, found
        // without indexing the file.
        var aliasLines: [String] = []
        for (_, line) in Self.byteLines(aliasText) {
            guard let space = line.lastIndex(where: { $0 == 0x20 || $0 == 0x09 }),
                  chosenNames.contains(Self.normaliseName(line[(space + 1)...]))
            else { continue }
            aliasLines.append(Self.text(line))
        }
        return ModuleResolution(
            kernelVersion: kernelVersion,
            modules: order.map { ModuleResolution.Module(name: modules[$0].name, path: modules[$0].path) },
            skipped: skipped,
            modulesDep: text(modules.indices.filter { chosen.contains($0) }.map { String(decoding: depText[modules[$0].line], as: UTF8.self) }),
            modulesBuiltin: builtinText,
            modulesOrder: text(orderPaths.filter { chosenPaths.contains($0) }),
            modulesAlias: text(aliasLines),
            modulesSoftdep: text(softdepLines.filter { chosenNames.contains($0.module) }.map(\.line)))
    }
}

/// modules.alias and the aliases of built-in modules, indexed: exact
/// aliases in a dictionary, wildcard patterns matched with fnmatch as kmod does.
struct AliasIndex {
    private var exact: [String: [String]] = [:]
    private var patterns: [(pattern: String, module: String)] = []
    private var builtinExact: [String: [String]] = [:]
    private var builtinPatterns: [(pattern: String, module: String)] = []

    init(_ index: ModuleIndex) throws(ModuleResolverError) {
        let path = index.directory + "/modules.alias"
        let keyword = Array("alias".utf8)
        for (number, line) in ModuleIndex.byteLines(index.aliasText) {
            let fields = ModuleIndex.fields(line)
            guard fields.count == 3, fields[0].elementsEqual(keyword) else {
                throw .malformedLine(path: path, line: number, text: ModuleIndex.text(line), reason: "expected 'alias <pattern> <module>'")
            }
            let module = ModuleIndex.normaliseName(fields[2])
            let (pattern, wildcard) = ModuleIndex.normaliseAlias(fields[1])
            if wildcard { patterns.append((pattern, module)) } else { exact[pattern, default: []].append(module) }
        }
        // modules.builtin.modinfo: NUL-separated "module.key=value" records.
        let aliasKey = Array("alias".utf8)
        for record in index.builtinModinfo.split(separator: 0) {
            guard let dot = record.firstIndex(of: UInt8(ascii: ".")),
                  let equals = record[dot...].firstIndex(of: UInt8(ascii: "=")),
                  record[(dot + 1)..<equals].elementsEqual(aliasKey)
            else { continue }
            let module = ModuleIndex.normaliseName(record[..<dot])
            let (value, wildcard) = ModuleIndex.normaliseAlias(record[(equals + 1)...])
            if wildcard { builtinPatterns.append((value, module)) } else { builtinExact[value, default: []].append(module) }
        }
    }

    /// Modules an alias stands for, in file order, each once; built-in
    /// modules that carry the alias come back in `builtIn`.
    func targets(_ name: String, in index: ModuleIndex) -> (modules: [String], builtIn: [String]) {
        let key = ModuleIndex.normaliseAlias(Array(name.utf8)[...]).0
        var seen: Set<String> = []
        var found: [String] = []
        for module in exact[key] ?? [] where seen.insert(module).inserted { found.append(module) }
        for (pattern, module) in patterns where !seen.contains(module) && fnmatch(pattern, key, 0) == 0 {
            seen.insert(module)
            found.append(module)
        }
        var builtins: [String] = []
        for module in builtinExact[key] ?? [] where seen.insert(module).inserted { builtins.append(module) }
        for (pattern, module) in builtinPatterns where !seen.contains(module) && fnmatch(pattern, key, 0) == 0 {
            seen.insert(module)
            builtins.append(module)
        }
        let modules = found.filter { index.byName[$0] != nil }
        builtins += found.filter { index.byName[$0] == nil && index.builtIn.contains($0) }
        return (modules, builtins)
    }
}

/// Depth-first walk with an explicit stack (no recursion limit), so a long
/// chain cannot overflow and a cycle is an error instead of a hang.
struct ModuleWalk {
    enum Requested { case module(Int), builtIn(String) }

    let index: ModuleIndex
    private(set) var order: [Int] = []
    private(set) var skipped: [ModuleResolution.Skip] = []
    private var state: [Int: Bool] = [:]  // false: on the stack, true: done
    private var aliasIndex: AliasIndex?

    init(index: ModuleIndex) { self.index = index }

    mutating func note(_ skip: ModuleResolution.Skip) {
        if !skipped.contains(skip) { skipped.append(skip) }
    }

    private mutating func aliases() throws(ModuleResolverError) -> AliasIndex {
        if let aliasIndex { return aliasIndex }
        let built = try AliasIndex(index)
        aliasIndex = built
        return built
    }

    mutating func lookupRequested(_ raw: String) throws(ModuleResolverError) -> Requested {
        let name = ModuleIndex.normaliseName(raw.trimmingCharacters(in: .whitespaces))
        if let id = index.byName[name] { return .module(id) }
        if index.builtIn.contains(name) { return .builtIn(name) }
        let (modules, builtins) = try aliases().targets(name, in: index)
        let all = modules + builtins
        if all.count > 1 {
            throw .ambiguousAlias(name: raw, directory: index.directory, candidates: all)
        }
        if let module = modules.first { return .module(index.byName[module]!) }
        if let builtin = builtins.first { return .builtIn(builtin) }
        throw .unknownModule(name: raw, directory: index.directory, suggestions: index.suggestions(for: name))
    }

    private struct Frame {
        let id: Int
        /// Children to visit first: hard dependencies (deepest first), then
        /// "pre:" soft dependencies; `soft` marks the latter.
        var children: [(id: Int, soft: Bool)]
        var next = 0
    }

    private mutating func frame(_ id: Int) throws(ModuleResolverError) -> Frame {
        var children = index.modules[id].deps.reversed().map { (id: $0, soft: false) }
        let name = index.modules[id].name
        for pre in index.softPre[name] ?? [] {
            let normal = ModuleIndex.normaliseName(pre)
            if let dep = index.byName[normal] {
                children.append((dep, true))
            } else if index.builtIn.contains(normal) {
                continue
            } else {
                let (modules, builtins) = try aliases().targets(normal, in: index)
                if modules.isEmpty && builtins.isEmpty {
                    note(.softDependencyNotFound(name: pre, neededBy: name))
                }
                children += modules.map { (index.byName[$0]!, true) }
            }
        }
        return Frame(id: id, children: children)
    }

    mutating func visit(_ root: Int) throws(ModuleResolverError) {
        if state[root] == true { return }
        var stack = [try frame(root)]
        state[root] = false
        while !stack.isEmpty {
            let top = stack.count - 1
            if stack[top].next == stack[top].children.count {
                let id = stack.removeLast().id
                state[id] = true
                order.append(id)
                continue
            }
            let child = stack[top].children[stack[top].next]
            stack[top].next += 1
            switch state[child.id] {
            case true?:
                continue
            case false?:
                let parent = index.modules[stack[top].id].name
                if child.soft {
                    note(.softDependencyCycle(name: index.modules[child.id].name, neededBy: parent))
                    continue
                }
                let start = stack.firstIndex { $0.id == child.id } ?? 0
                let chain = stack[start...].map { index.modules[$0.id].name } + [index.modules[child.id].name]
                throw .dependencyCycle(chain: chain, directory: index.directory)
            case nil:
                state[child.id] = false
                stack.append(try frame(child.id))
            }
        }
    }
}
