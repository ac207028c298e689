import Foundation

/// Loads a recipe strictly: unknown keys, wrong types, missing source files and
/// bad modes are `ConfigError`s located at the offending node. Relative paths
/// resolve against the recipe's folder, so a recipe can be run from anywhere.
public enum RecipeLoader {
    static let topKeys = ["name", "base", "packages", "busybox", "directories", "files", "symlinks", "remove",
                          "authorized_keys", "run", "kernel", "initramfs", "image", "cmdline", "arch", "sysroot"]
    static let baseKinds = ["scratch", "directory", "tarball", "oci-archive", "debs", "mmdebstrap", "debootstrap"]

    public static func load(path: String) throws -> Recipe {
        let url = URL(fileURLWithPath: path).standardizedFileURL
        let display = path
        let text: String
        do {
            text = try readTextFile(url.path)
        } catch {
            throw ConfigError(ConfigLocation(file: display, line: 0, column: 0), "cannot read the recipe: \(error)")
        }
        return try parse(text, file: display, folder: url.deletingLastPathComponent().path)
    }

    /// Parses recipe text; `folder` is where relative paths resolve.
    public static func parse(_ text: String, file: String, folder: String) throws -> Recipe {
        let root = try YAMLValue.parse(text, file: file)
        let top = try root.map(allowed: topKeys)
        let context = Context(folder: folder)

        let nameValue = try top.required("name")
        let name = try nameValue.string()
        if name.isEmpty || name.count > 64 || !name.allSatisfy({ $0.isLetter || $0.isNumber || "._-".contains($0) }) || name.hasPrefix(".") {
            throw nameValue.error("invalid recipe name '\(name)'", hint: "use letters, digits, '.', '_' and '-'; it names the artifacts folder")
        }

        let packages = try top.stringList("packages")
        let base = try parseBase(try top.required("base"), packages: packages, context: context)
        if !packages.isEmpty, !base.acceptsPackages, let value = top["packages"] {
            throw value.error("'packages' needs a base that installs packages", hint: "use base 'debs', 'mmdebstrap' or 'debootstrap'")
        }

        var busybox: BusyboxSource?
        if let value = top["busybox"] { busybox = try parseEnum(value, BusyboxSource.self) }
        if busybox == .rootfs, let value = top["busybox"] {
            throw value.error("top-level 'busybox' installs busybox into the rootfs, so it can only come from 'host'")
        }

        let directories = try top["directories"]?.list().map { try parseDirectory($0, context: context) } ?? []
        let files = try top["files"]?.list().map { try parseFile($0, context: context) } ?? []
        let symlinks = try top["symlinks"]?.pairs().map { pair in
            SymlinkSpec(path: try rootPath(pair.key), target: try nonEmpty(pair.value), location: pair.key.location)
        } ?? []
        let remove = try top["remove"]?.list().map { RemoveSpec(path: try rootPath($0), location: $0.location) } ?? []
        let keys = try top["authorized_keys"]?.pairs().map { pair in
            try parseAuthorizedKeys(user: pair.key, keys: pair.value, context: context)
        } ?? []
        let run = try top["run"]?.list().map { RunSpec(command: try nonEmpty($0), location: $0.location) } ?? []

        let kernel = try parseKernel(try top.required("kernel"), context: context)
        let initramfs = try top["initramfs"].map { try parseInitramfs($0, context: context) } ?? InitramfsSpec()
        if case .rootfs = kernel.source, case .scratch = base, !files.contains(where: { $0.path.hasPrefix("/boot/") }) {
            throw try top.required("kernel").error(
                "the kernel is taken from the rootfs, but the base is 'scratch' and has no /boot",
                hint: "give 'kernel: {path: /boot/vmlinuz-*, modules: /lib/modules}' to use the host's kernel")
        }
        let image = try top["image"].map { try parseImage($0) } ?? ImageSpec()
        let cmdline = try top.string("cmdline") ?? "console=ttyS0,115200"
        if cmdline.contains("\n") { throw try top.required("cmdline").error("the kernel command line must be one line") }

        var recipe = Recipe(
            name: name, file: file, base: base, packages: packages, busybox: busybox,
            directories: directories, files: files, symlinks: symlinks, remove: remove,
            authorizedKeys: keys, run: run, kernel: kernel, initramfs: initramfs, image: image, cmdline: cmdline)
        if let value = top["arch"] { recipe.arch = try parseEnum(value, Architecture.self) }
        if let value = top["sysroot"] { recipe.sysroot = try parseSysroot(value) }
        if recipe.arch.isForeign { try checkForeign(recipe, top: top) }
        return recipe
    }

    static func parseSysroot(_ value: YAMLValue) throws -> SysrootSpec {
        let map = try value.map(allowed: ["suite", "mirror", "packages"])
        let suite = try map.string("suite")
        if let suite, suite.isEmpty || suite.contains(where: { $0.isWhitespace || $0 == "/" }) {
            throw try map.required("suite").error("invalid suite '\(suite)'", hint: "a Debian suite or codename, e.g. bookworm")
        }
        let mirror = try map.string("mirror")
        if let mirror, URL(string: mirror)?.scheme == nil {
            throw try map.required("mirror").error("invalid mirror '\(mirror)'", hint: "a URL such as http://deb.debian.org/debian")
        }
        let packages = try map["packages"].map { try $0.stringList() }
        return SysrootSpec(suite: suite, mirror: mirror, packages: packages, location: value.location)
    }

    /// What a build for another architecture cannot do: run anything in the image's root (its programs
    /// are not this machine's), or resolve packages with this machine's apt.
    static func checkForeign(_ recipe: Recipe, top: YAMLMap) throws {
        let host = Architecture.host?.rawValue ?? "this machine's architecture"
        if let value = top["run"], !recipe.run.isEmpty {
            throw value.error("'run' commands run in the image's root on this machine, which cannot run \(recipe.arch) programs (it is \(host))",
                              hint: "build the image on an \(recipe.arch) machine, or do it with 'files' and 'symlinks'")
        }
        switch recipe.base {
        case .bootstrap(let tool, _, _, _, _):
            throw try top.required("base").error("base '\(tool.rawValue)' installs packages by running them, which this \(host) machine cannot do for \(recipe.arch)",
                                                 hint: "use a 'scratch', 'debs' (files), 'tarball' or 'directory' base of \(recipe.arch) files")
        case .debs(_, let packages) where !packages.isEmpty:
            throw try top.required("base").error("'debs' packages are resolved with this machine's apt, for \(host), not \(recipe.arch)",
                                                 hint: "list them under 'sysroot.packages', or give \(recipe.arch) .deb files")
        default: break
        }
    }

    struct Context {
        let folder: String
        func resolve(_ path: String) -> String {
            let expanded = (path as NSString).expandingTildeInPath
            if expanded.hasPrefix("/") { return URL(fileURLWithPath: expanded).standardizedFileURL.path }
            return URL(fileURLWithPath: folder).appendingPathComponent(expanded).standardizedFileURL.path
        }
        /// A host file that must exist now, so a typo fails before a long build starts.
        func existingFile(_ value: YAMLValue, directory: Bool = false) throws -> String {
            let raw = try nonEmpty(value)
            let path = resolve(raw)
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
                throw value.error("'\(raw)' does not exist", hint: raw.hasPrefix("/") ? nil : "relative paths are resolved against \(folder)")
            }
            if directory && !isDirectory.boolValue { throw value.error("'\(raw)' is not a directory") }
            if !directory && isDirectory.boolValue { throw value.error("'\(raw)' is a directory, expected a file") }
            return path
        }
    }

    static func parseBase(_ value: YAMLValue, packages: [String], context: Context) throws -> BaseSource {
        let map = try value.map(allowed: baseKinds)
        let present = map.keys
        guard present.count == 1, let kind = present.first, let body = map[kind] ?? (kind == "scratch" ? value : nil) else {
            throw value.error(present.isEmpty ? "the base is empty" : "the base has \(present.count) kinds (\(present.joined(separator: ", "))); choose one",
                              hint: "one of: \(baseKinds.joined(separator: ", "))")
        }
        switch kind {
        case "scratch":
            if let flag = map["scratch"], try !flag.bool() { throw flag.error("'scratch: false' makes no base; remove it or choose another kind") }
            return .scratch
        case "directory": return .directory(try context.existingFile(body, directory: true))
        case "tarball": return .tarball(try context.existingFile(body))
        case "oci-archive": return .ociArchive(try context.existingFile(body))
        case "debs":
            let debs = try body.map(allowed: ["files", "packages"])
            let files = try debs["files"]?.list().map { try context.existingFile($0) } ?? []
            let extra = try debs.stringList("packages")
            if files.isEmpty && extra.isEmpty && packages.isEmpty {
                throw body.error("'debs' lists no .deb files and no packages")
            }
            return .debs(files: files, packages: extra + packages)
        default:
            let spec = try body.map(allowed: ["suite", "mirror", "variant", "components"])
            let suite = try spec.required("suite").string()
            let variant = try spec.string("variant")
            if let variant, !["minbase", "buildd", "important", "required", "standard", "essential", "apt", "debootstrap", "-"].contains(variant) {
                throw spec["variant"]!.error("unknown variant '\(variant)'", hint: "minbase, important, standard, required, essential, apt, buildd")
            }
            return .bootstrap(tool: kind == "mmdebstrap" ? .mmdebstrap : .debootstrap, suite: suite,
                              mirror: try spec.string("mirror"), variant: variant, components: try spec.stringList("components"))
        }
    }

    static func parseDirectory(_ value: YAMLValue, context: Context) throws -> DirectorySpec {
        let map = try value.map(allowed: ["path", "mode", "owner"])
        return DirectorySpec(
            path: try rootPath(try map.required("path")),
            mode: try map["mode"].map(parseMode) ?? 0o755,
            owner: try map["owner"].map(parseOwner) ?? .root,
            location: value.location)
    }

    static func parseFile(_ value: YAMLValue, context: Context) throws -> FileSpec {
        let map = try value.map(allowed: ["path", "content", "source", "mode", "owner"])
        let path = try rootPath(try map.required("path"))
        let content: FileSpec.Content
        switch (map["content"], map["source"]) {
        case (let inline?, nil): content = .inline(try inline.string())
        case (nil, let source?): content = .source(try context.existingFile(source))
        case (.some, .some): throw value.error("file '\(path)' has both 'content' and 'source'; choose one")
        case (nil, nil):
            // `content: ""` is null-like in YAML only when unquoted and empty; treat a present key as empty content.
            if map.keys.contains("content") { content = .inline("") } else {
                throw value.error("file '\(path)' needs 'content' or 'source'")
            }
        }
        return FileSpec(path: path, content: content,
                        mode: try map["mode"].map(parseMode) ?? 0o644,
                        owner: try map["owner"].map(parseOwner) ?? .root,
                        location: value.location)
    }

    static func parseAuthorizedKeys(user: YAMLValue, keys: YAMLValue, context: Context) throws -> AuthorizedKeysSpec {
        let name = try nonEmpty(user)
        guard name.allSatisfy({ $0.isLetter || $0.isNumber || "._-".contains($0) }) else {
            throw user.error("invalid user name '\(name)'")
        }
        var lines: [String] = []
        for entry in try keys.list() {
            let text = try nonEmpty(entry)
            if text.hasPrefix("ssh-") || text.hasPrefix("ecdsa-") || text.hasPrefix("sk-") {
                lines.append(text)
            } else {
                let path = try context.existingFile(entry)
                let body = try String(contentsOfFile: path, encoding: .utf8)
                let found = body.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
                    .filter { !$0.isEmpty && !$0.hasPrefix("#") }
                if found.isEmpty { throw entry.error("'\(text)' holds no public key") }
                lines += found
            }
        }
        return AuthorizedKeysSpec(user: name, keys: lines, location: user.location)
    }

    static func parseKernel(_ value: YAMLValue, context: Context) throws -> KernelSpec {
        let map = try value.map(allowed: ["from", "path", "deb", "version", "modules"])
        var sources: [KernelSpec.Source] = []
        if let from = map["from"] {
            let text = try from.string()
            guard text == "rootfs" else {
                throw from.error("unknown kernel source '\(text)'", hint: "'from: rootfs', or give 'path:' or 'deb:'")
            }
            sources.append(.rootfs)
        }
        if let path = map["path"] {
            let raw = try nonEmpty(path)
            let resolved = context.resolve(raw)
            if raw.contains("*") || raw.contains("?") {
                if HostGlob.matches(resolved).isEmpty { throw path.error("no file matches '\(raw)'", hint: "is a kernel package (e.g. linux-image-amd64) installed?") }
                sources.append(.path(resolved))
            } else {
                sources.append(.path(try context.existingFile(path)))
            }
        }
        if let deb = map["deb"] { sources.append(.deb(try context.existingFile(deb))) }
        guard sources.count == 1 else {
            throw value.error(sources.isEmpty ? "the kernel has no source" : "the kernel has more than one source",
                              hint: "use exactly one of 'from: rootfs', 'path: FILE' or 'deb: FILE'")
        }
        let modules = try map["modules"].map { try context.existingFile($0, directory: true) }
        return KernelSpec(source: sources[0], version: try map.string("version"), modulesDirectory: modules)
    }

    static func parseInitramfs(_ value: YAMLValue, context: Context) throws -> InitramfsSpec {
        let map = try value.map(allowed: ["busybox", "modules", "compression", "binaries", "binaries_from", "files",
                                          "init", "load_img", "onfail", "onfail_delay", "download_retries", "p2p"])
        var spec = InitramfsSpec()
        spec.location = value.location
        if let v = map["busybox"] { spec.busybox = try parseEnum(v, BusyboxSource.self) }
        spec.modules = try map.stringList("modules")
        if let v = map["compression"] { spec.compression = try parseEnum(v, Compression.self) }
        spec.binaries = try map.stringList("binaries")
        for binary in try map["binaries"]?.list() ?? [] where !(try binary.string()).hasPrefix("/") {
            throw binary.error("binaries are absolute paths (on the host or in the rootfs)")
        }
        if let v = map["binaries_from"] { spec.binariesFrom = try parseEnum(v, BusyboxSource.self) }
        spec.files = try map["files"]?.list().map { try parseFile($0, context: context) } ?? []
        spec.initTemplate = try map["init"].map { try context.existingFile($0) }
        spec.loadImageTemplate = try map["load_img"].map { try context.existingFile($0) }
        if let v = map["onfail"] { spec.onFail = try parseEnum(v, OnFail.self) }
        spec.onFailDelay = try map.int("onfail_delay", in: 0...86_400) ?? spec.onFailDelay
        spec.downloadRetries = try map.int("download_retries", in: 1...1000) ?? spec.downloadRetries
        spec.p2p = try map.bool("p2p") ?? false
        return spec
    }

    static func parseImage(_ value: YAMLValue) throws -> ImageSpec {
        let map = try value.map(allowed: ["format", "exclude"])
        var spec = ImageSpec()
        if let v = map["format"] { spec.format = try parseEnum(v, ImageFormat.self) }
        spec.exclude = try map["exclude"]?.list().map(rootPath) ?? []
        return spec
    }

    static func parseEnum<E: RawRepresentable & CaseIterable>(_ value: YAMLValue, _ type: E.Type) throws -> E where E.RawValue == String {
        let text = try value.string()
        if let result = E(rawValue: text) { return result }
        let names = E.allCases.map(\.rawValue)
        let hint = closestMatch(to: text, in: names).map { "did you mean '\($0)'?" } ?? "one of: \(names.joined(separator: ", "))"
        throw value.error("unknown value '\(text)'", hint: hint)
    }

    /// Octal permission bits as written in a recipe: "0644", "644", "0o644", "4755".
    static func parseMode(_ value: YAMLValue) throws -> UInt32 {
        var text = try value.string()
        if text.hasPrefix("0o") { text.removeFirst(2) }
        guard !text.isEmpty, text.count <= 5, let mode = UInt32(text, radix: 8), mode <= 0o7777 else {
            throw value.error("bad mode '\(try value.string())'", hint: "write octal permission bits in quotes, e.g. \"0644\" or \"0755\"")
        }
        return mode
    }

    /// `user:group`, `user` (group = same name), numbers or names.
    static func parseOwner(_ value: YAMLValue) throws -> Owner {
        let text = try value.string()
        let parts = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard (1...2).contains(parts.count), parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy { $0.isLetter || $0.isNumber || "._-".contains($0) } }) else {
            throw value.error("bad owner '\(text)'", hint: "write user:group, by name or number, e.g. \"root:root\" or \"1000:1000\"")
        }
        func id(_ s: String) -> Owner.ID { UInt32(s).map { .number($0) } ?? .name(s) }
        return Owner(user: id(parts[0]), group: id(parts.count == 2 ? parts[1] : parts[0]))
    }

    /// An absolute path inside the rootfs, normalised; `..` is refused because
    /// it usually means the author thought of a host path.
    static func rootPath(_ value: YAMLValue) throws -> String {
        let text = try nonEmpty(value)
        guard text.hasPrefix("/") else { throw value.error("'\(text)' must be an absolute path inside the image (start with '/')") }
        let parts = text.split(separator: "/").filter { $0 != "." }
        if parts.contains("..") { throw value.error("'\(text)' contains '..'; paths inside the image must not climb") }
        if parts.isEmpty { throw value.error("'/' itself cannot be the target here") }
        return "/" + parts.joined(separator: "/")
    }
}

func nonEmpty(_ value: YAMLValue) throws -> String {
    let text = try value.string()
    if text.trimmingCharacters(in: .whitespaces).isEmpty { throw value.error("must not be empty") }
    return text
}

/// Reads a UTF-8 text file; errors say what the OS said ("No such file or directory").
public func readTextFile(_ path: String) throws -> String {
    guard let data = FileManager.default.contents(atPath: path) else {
        let code = access(path, R_OK) == 0 ? EISDIR : errno
        throw RootfsError.system(operation: "read", path: path, errno: code)
    }
    guard let text = String(data: data, encoding: .utf8) else {
        throw RootfsError.system(operation: "read (not UTF-8 text)", path: path, errno: EILSEQ)
    }
    return text
}

extension BaseSource {
    var acceptsPackages: Bool {
        switch self {
        case .debs, .bootstrap: return true
        default: return false
        }
    }
}

/// Host filesystem globbing (for kernel paths like `/boot/vmlinuz-*`).
enum HostGlob {
    static func matches(_ pattern: String) -> [String] {
        var result = glob_t()
        defer { globfree(&result) }
        guard glob(pattern, 0, nil, &result) == 0 else { return [] }
        return (0..<Int(result.gl_pathc)).compactMap { result.gl_pathv[$0].map { String(cString: $0) } }
    }
}
