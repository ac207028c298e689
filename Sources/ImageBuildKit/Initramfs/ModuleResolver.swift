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
            switch try index.lookupRequested(raw) {
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

/// The parsed metadata of one modules directory.
struct ModuleIndex: Sendable {
    struct Entry: Sendable {
        let name: String
        let path: String
        /// Dependency module ids, in modules.dep order (load from the last).
        var deps: [Int] = []
        var depPaths: [String]
        let line: String
    }

    enum Requested { case module(Int), builtIn(String) }

    let directory: String
    var modules: [Entry] = []
    var byName: [String: Int] = [:]
    var builtIn: Set<String> = []
    var builtinText: String
    /// Alias (normalised) -> module names, for patterns without wildcards.
    var exactAliases: [String: [String]] = [:]
    /// Patterns with wildcards, matched with fnmatch like kmod.
    var patternAliases: [(pattern: String, module: String)] = []
    var aliasLines: [(module: String, line: String)] = []
    var builtinAliases: [String: [String]] = [:]
    var softPre: [String: [String]] = [:]
    var softdepLines: [(module: String, line: String)] = []
    var orderPaths: [String] = []

    init(directory: String, dep: [UInt8], builtin: [UInt8], alias: [UInt8], softdep: [UInt8], order: [UInt8], builtinModinfo: [UInt8]) throws(ModuleResolverError) {
        self.directory = directory
        self.builtinText = String(decoding: builtin, as: UTF8.self)

        let depPath = directory + "/modules.dep"
        for (number, line) in Self.lines(dep) {
            guard let colon = line.firstIndex(of: ":") else {
                throw .malformedLine(path: depPath, line: number, text: line, reason: "no ':' after the module path")
            }
            let path = String(line[..<colon])
            guard !path.isEmpty, !path.contains(" ") else {
                throw .malformedLine(path: depPath, line: number, text: line, reason: "empty or spaced module path")
            }
            let deps = line[line.index(after: colon)...].split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            let name = Self.moduleName(path)
            if byName[name] == nil {
                byName[name] = modules.count
                modules.append(Entry(name: name, path: path, depPaths: deps, line: line))
            }
        }
        for id in modules.indices {
            var ids: [Int] = []
            for depPath in modules[id].depPaths {
                guard let dep = byName[Self.moduleName(depPath)] else {
                    throw .missingDependency(module: modules[id].name, dependency: depPath, directory: directory)
                }
                ids.append(dep)
            }
            modules[id].deps = ids
        }

        for (_, line) in Self.lines(builtin) {
            builtIn.insert(Self.moduleName(line))
        }

        let aliasPath = directory + "/modules.alias"
        for (number, line) in Self.lines(alias) {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count == 3, fields[0] == "alias" else {
                throw .malformedLine(path: aliasPath, line: number, text: line, reason: "expected 'alias <pattern> <module>'")
            }
            let pattern = Self.normaliseAlias(fields[1])
            let module = Self.normaliseName(fields[2])
            aliasLines.append((module, line))
            if pattern.contains(where: { $0 == "*" || $0 == "?" || $0 == "[" }) {
                patternAliases.append((pattern, module))
            } else {
                exactAliases[pattern, default: []].append(module)
            }
        }

        // modules.builtin.modinfo: NUL-separated "module.key=value" records.
        for record in builtinModinfo.split(separator: 0) {
            guard let dot = record.firstIndex(of: UInt8(ascii: ".")),
                  let equals = record[dot...].firstIndex(of: UInt8(ascii: "=")),
                  String(decoding: record[(dot + 1)..<equals], as: UTF8.self) == "alias"
            else { continue }
            let module = Self.normaliseName(String(decoding: record[..<dot], as: UTF8.self))
            let value = Self.normaliseAlias(String(decoding: record[(equals + 1)...], as: UTF8.self))
            builtinAliases[value, default: []].append(module)
        }

        let softPath = directory + "/modules.softdep"
        for (number, line) in Self.lines(softdep) {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            guard fields.count >= 2, fields[0] == "softdep" else {
                throw .malformedLine(path: softPath, line: number, text: line, reason: "expected 'softdep <module> pre: ... post: ...'")
            }
            let module = Self.normaliseName(fields[1])
            softdepLines.append((module, line))
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

        orderPaths = Self.lines(order).map { $0.1 }
    }

    /// Non-empty, non-comment lines with their 1-based numbers.
    static func lines(_ bytes: [UInt8]) -> [(Int, String)] {
        var result: [(Int, String)] = []
        var number = 0
        for raw in bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            number += 1
            var line = Substring(decoding: raw, as: UTF8.self)
            while let last = line.last, last == " " || last == "\t" || last == "\r" { line.removeLast() }
            guard let first = line.first, first != "#" else { continue }
            result.append((number, String(line)))
        }
        return result
    }

    /// "kernel/net/core/failover.ko.zst" -> "failover"; "crc32c-intel" -> "crc32c_intel".
    static func moduleName(_ path: String) -> String {
        let base = path.split(separator: "/" as Character).last.map(String.init) ?? path
        return normaliseName(base.prefix(while: { $0 != "." }))
    }

    static func normaliseName<S: StringProtocol>(_ name: S) -> String {
        String(name.map { $0 == "-" ? "_" : $0 })
    }

    /// kmod's alias normalisation: `-` becomes `_` except inside `[...]`.
    static func normaliseAlias<S: StringProtocol>(_ alias: S) -> String {
        var inBracket = false
        var out = ""
        out.reserveCapacity(alias.utf8.count)
        for c in alias {
            switch c {
            case "[": inBracket = true; out.append(c)
            case "]": inBracket = false; out.append(c)
            case "-" where !inBracket: out.append("_")
            default: out.append(c)
            }
        }
        return out
    }

    /// Modules an alias stands for, in file order, each once; built-in
    /// modules that carry the alias come back in `builtIn`.
    func aliasTargets(_ name: String) -> (modules: [String], builtIn: [String]) {
        let key = Self.normaliseAlias(name)
        var seen: Set<String> = []
        var found: [String] = []
        for module in exactAliases[key] ?? [] where seen.insert(module).inserted { found.append(module) }
        for (pattern, module) in patternAliases where !seen.contains(module) && fnmatch(pattern, key, 0) == 0 {
            seen.insert(module)
            found.append(module)
        }
        var builtins: [String] = []
        for module in builtinAliases[key] ?? [] where seen.insert(module).inserted { builtins.append(module) }
        let modules = found.filter { byName[$0] != nil }
        builtins += found.filter { byName[$0] == nil && builtIn.contains($0) }
        return (modules, builtins)
    }

    func lookupRequested(_ raw: String) throws(ModuleResolverError) -> Requested {
        let name = Self.normaliseName(raw.trimmingCharacters(in: .whitespaces))
        if let id = byName[name] { return .module(id) }
        if builtIn.contains(name) { return .builtIn(name) }
        let (modules, builtins) = aliasTargets(name)
        let all = modules + builtins
        if all.count > 1 {
            throw .ambiguousAlias(name: raw, directory: directory, candidates: all)
        }
        if let module = modules.first { return .module(byName[module]!) }
        if let builtin = builtins.first { return .builtIn(builtin) }
        throw .unknownModule(name: raw, directory: directory, suggestions: suggestions(for: name))
    }

    /// Up to three known names closest to `name` by edit distance (or that
    /// start with it), for the "did you mean" hint.
    func suggestions(for name: String) -> [String] {
        let query = Array(name.utf8)
        let limit = max(2, query.count / 3)
        var scored: [(Int, String)] = []
        for candidate in Set(modules.map(\.name)).union(builtIn) {
            let bytes = Array(candidate.utf8)
            let isPrefix = query.count >= 3 && bytes.starts(with: query)
            let distance = ModuleNameDistance.levenshtein(query, bytes, limit: isPrefix ? Int.max : limit)
            if let distance, distance <= limit || isPrefix { scored.append((distance, candidate)) }
        }
        return scored.sorted { $0.0 != $1.0 ? $0.0 < $1.0 : $0.1 < $1.1 }.prefix(3).map(\.1)
    }

    func resolution(kernelVersion: String, order: [Int], skipped: [ModuleResolution.Skip]) -> ModuleResolution {
        let chosen = Set(order)
        let chosenNames = Set(order.map { modules[$0].name })
        let chosenPaths = Set(order.map { modules[$0].path })
        func text(_ lines: [String]) -> String { lines.map { $0 + "\n" }.joined() }
        return ModuleResolution(
            kernelVersion: kernelVersion,
            modules: order.map { ModuleResolution.Module(name: modules[$0].name, path: modules[$0].path) },
            skipped: skipped,
            modulesDep: text(modules.indices.filter { chosen.contains($0) }.map { modules[$0].line }),
            modulesBuiltin: builtinText,
            modulesOrder: text(orderPaths.filter { chosenPaths.contains($0) }),
            modulesAlias: text(aliasLines.filter { chosenNames.contains($0.module) }.map(\.line)),
            modulesSoftdep: text(softdepLines.filter { chosenNames.contains($0.module) }.map(\.line)))
    }
}

/// Depth-first walk with an explicit stack (no recursion limit), so a long
/// chain cannot overflow and a cycle is an error instead of a hang.
struct ModuleWalk {
    let index: ModuleIndex
    private(set) var order: [Int] = []
    private(set) var skipped: [ModuleResolution.Skip] = []
    private var state: [Int: Bool] = [:]  // false: on the stack, true: done

    init(index: ModuleIndex) { self.index = index }

    mutating func note(_ skip: ModuleResolution.Skip) {
        if !skipped.contains(skip) { skipped.append(skip) }
    }

    private struct Frame {
        let id: Int
        /// Children to visit first: hard dependencies (deepest first), then
        /// "pre:" soft dependencies; `soft` marks the latter.
        var children: [(id: Int, soft: Bool)]
        var next = 0
    }

    private mutating func frame(_ id: Int) -> Frame {
        var children = index.modules[id].deps.reversed().map { (id: $0, soft: false) }
        let name = index.modules[id].name
        for pre in index.softPre[name] ?? [] {
            let normal = ModuleIndex.normaliseName(pre)
            if let dep = index.byName[normal] {
                children.append((dep, true))
            } else if index.builtIn.contains(normal) {
                continue
            } else {
                let (modules, builtins) = index.aliasTargets(normal)
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
        var stack = [frame(root)]
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
                stack.append(frame(child.id))
            }
        }
    }
}

/// Levenshtein distance with an early exit once every cell of a row passes
/// `limit` (the answer then is nil): ~4000 names are scored per unknown name.
enum ModuleNameDistance {
    static func levenshtein(_ a: [UInt8], _ b: [UInt8], limit: Int) -> Int? {
        if abs(a.count - b.count) > limit { return nil }
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var previous = Array(0...b.count)
        var current = [Int](repeating: 0, count: b.count + 1)
        for i in 1...a.count {
            current[0] = i
            var best = current[0]
            for j in 1...b.count {
                let cost = a[i - 1] == b[j - 1] ? 0 : 1
                current[j] = Swift.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
                best = Swift.min(best, current[j])
            }
            if best > limit { return nil }
            swap(&previous, &current)
        }
        return previous[b.count] <= limit ? previous[b.count] : nil
    }
}
