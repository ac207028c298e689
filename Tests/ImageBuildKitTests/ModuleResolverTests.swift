import Foundation
import Testing
@testable import ImageBuildKit

/// A small modules directory shaped like Debian's: flattened modules.dep
/// lines, compressed module names, aliases with wildcards, soft
/// dependencies through aliases, a soft-dependency loop and a hard one.
private enum Synthetic {
    static let version = "6.1.0-99-test"
    static let dep = """
        kernel/drivers/virtio/virtio_ring.ko:
        kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
        kernel/net/core/failover.ko:
        kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
        kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
        kernel/drivers/virtio/virtio_pci_modern_dev.ko:
        kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
        kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
        kernel/crypto/crc32c_generic.ko.xz:
        kernel/arch/x86/crypto/crc32c-intel.ko.zst:
        kernel/lib/crc16.ko:
        kernel/fs/jbd2/jbd2.ko.xz:
        kernel/fs/mbcache.ko:
        kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko.xz
        kernel/drivers/net/ethernet/intel/e1000/e1000.ko:
        kernel/test/cyc_a.ko: kernel/test/cyc_b.ko
        kernel/test/cyc_b.ko: kernel/test/cyc_a.ko
        kernel/test/soft_a.ko:
        kernel/test/soft-b.ko:
        kernel/test/ghost.ko:

        """
    static let builtin = """
        kernel/drivers/block/virtio_blk.ko
        kernel/lib/crc32.ko

        """
    static let alias = """
        # Aliases extracted from modules themselves.
        alias virtio:d00000001v* virtio_net
        alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
        alias crypto-crc32c crc32c_intel
        alias crc32c crc32c_intel
        alias crypto-crc32c crc32c_generic
        alias crc32c crc32c_generic
        alias fs-ext4 ext4
        alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000

        """
    static let softdep = """
        # Soft dependencies extracted from modules themselves.
        softdep jbd2 pre: crypto-crc32c
        softdep ext4 pre: crc16 post: fs-nothing
        softdep soft_a pre: soft-b no_such_module
        softdep soft_b pre: soft_a
        softdep e1000 ignored-before-pre

        """
    static let builtinModinfo: [UInt8] = Array("virtio_blk.alias=virtio:d00000002v*\0crc32.alias=crypto-crc32\0crc32.license=GPL\0".utf8)

    static var paths: [String] {
        dep.split(separator: "\n").map { String($0.prefix(while: { $0 != ":" })) }
    }

    /// Writes the directory; every module file exists except ghost.ko.
    static func write(into root: URL) throws -> URL {
        let dir = root.appendingPathComponent("lib/modules/\(version)")
        try KmodTestSupport.write(dep, to: dir.appendingPathComponent("modules.dep"))
        try KmodTestSupport.write(builtin, to: dir.appendingPathComponent("modules.builtin"))
        try KmodTestSupport.write(alias, to: dir.appendingPathComponent("modules.alias"))
        try KmodTestSupport.write(softdep, to: dir.appendingPathComponent("modules.softdep"))
        try KmodTestSupport.write(builtinModinfo, to: dir.appendingPathComponent("modules.builtin.modinfo"))
        try KmodTestSupport.write(paths.map { $0 + "\n" }.joined(), to: dir.appendingPathComponent("modules.order"))
        for path in paths where !path.hasSuffix("ghost.ko") {
            try KmodTestSupport.write("module", to: dir.appendingPathComponent(path))
        }
        return dir
    }
}

private func moduleError(_ body: () throws -> Void) -> ModuleResolverError? {
    do { try body() } catch let error as ModuleResolverError { return error } catch { return nil }
    return nil
}

@Suite("ModuleResolver")
struct ModuleResolverTests {
    struct Case: Sendable, CustomTestStringConvertible {
        let requested: [String]
        let order: [String]
        var skipped: [ModuleResolution.Skip] = []
        var testDescription: String { requested.joined(separator: ",") }
    }

    static let cases: [Case] = [
        Case(requested: ["virtio_net"], order: ["virtio_ring", "virtio", "failover", "net_failover", "virtio_net"]),
        Case(requested: ["virtio-net", "virtio_pci"], order: [
            "virtio_ring", "virtio", "failover", "net_failover", "virtio_net",
            "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
        ]),
        Case(requested: ["virtio_pci", "virtio_net"], order: [
            "virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
            "failover", "net_failover", "virtio_net",
        ]),
        // jbd2's "pre: crypto-crc32c" is an alias for two modules: both load, in file order.
        Case(requested: ["ext4"], order: ["crc32c_intel", "crc32c_generic", "jbd2", "mbcache", "crc16", "ext4"]),
        Case(requested: ["fs-ext4"], order: ["crc32c_intel", "crc32c_generic", "jbd2", "mbcache", "crc16", "ext4"]),
        Case(requested: ["virtio:d00000001v00001AF4"], order: ["virtio_ring", "virtio", "failover", "net_failover", "virtio_net"]),
        Case(requested: ["e1000", "e1000", "E1000".lowercased()], order: ["e1000"]),
        Case(requested: ["virtio_blk", "e1000"], order: ["e1000"],
             skipped: [.builtIn(name: "virtio_blk", requestedAs: "virtio_blk")]),
        Case(requested: ["virtio:d00000002v00001AF4"], order: [],
             skipped: [.builtIn(name: "virtio_blk", requestedAs: "virtio:d00000002v00001AF4")]),
        Case(requested: ["crypto-crc32", "crc32"], order: [],
             skipped: [.builtIn(name: "crc32", requestedAs: "crypto-crc32"), .builtIn(name: "crc32", requestedAs: "crc32")]),
        Case(requested: ["soft_a"], order: ["soft_b", "soft_a"], skipped: [
            .softDependencyNotFound(name: "no_such_module", neededBy: "soft_a"),
            .softDependencyCycle(name: "soft_a", neededBy: "soft_b"),
        ]),
        Case(requested: [], order: []),
    ]

    @Test("synthetic modules directory", arguments: cases)
    func synthetic(_ c: Case) throws {
        try KmodTestSupport.withTemporaryDirectory { root in
            let dir = try Synthetic.write(into: root)
            let resolver = try ModuleResolver(modulesDirectory: dir)
            #expect(resolver.kernelVersion == Synthetic.version)
            let result = try resolver.resolve(c.requested)
            #expect(result.modules.map(\.name) == c.order)
            #expect(result.skipped == c.skipped)
            // Paths come from modules.dep verbatim, compressed suffixes included.
            for module in result.modules {
                #expect(Synthetic.paths.contains(module.path))
                #expect(FileManager.default.fileExists(atPath: dir.appendingPathComponent(module.path).path))
            }
            #expect(result.files == result.modules.map(\.path))
            #expect(result.modulesTxt == result.modules.map { "/lib/modules/\(Synthetic.version)/\($0.path)\n" }.joined())

            // The same from strings, without a filesystem.
            let pure = try ModuleResolver(
                kernelVersion: Synthetic.version, modulesDep: Synthetic.dep, modulesBuiltin: Synthetic.builtin,
                modulesAlias: Synthetic.alias, modulesSoftdep: Synthetic.softdep,
                modulesOrder: Synthetic.paths.joined(separator: "\n"), builtinModinfo: Synthetic.builtinModinfo)
            #expect(try pure.resolve(c.requested) == result)
        }
    }

    @Test("compressed names are kept")
    func compressed() throws {
        let resolver = try ModuleResolver(
            kernelVersion: Synthetic.version, modulesDep: Synthetic.dep, modulesAlias: Synthetic.alias,
            modulesSoftdep: Synthetic.softdep)
        let files = try resolver.resolve(["ext4"]).files
        #expect(files == [
            "kernel/arch/x86/crypto/crc32c-intel.ko.zst", "kernel/crypto/crc32c_generic.ko.xz",
            "kernel/fs/jbd2/jbd2.ko.xz", "kernel/fs/mbcache.ko", "kernel/lib/crc16.ko", "kernel/fs/ext4/ext4.ko.xz",
        ])
    }

    @Test("trimmed metadata for the initramfs")
    func trimmed() throws {
        try KmodTestSupport.withTemporaryDirectory { root in
            let resolver = try ModuleResolver(modulesDirectory: try Synthetic.write(into: root))
            let result = try resolver.resolve(["virtio_net", "jbd2", "virtio_blk"])
            let chosen = Set(result.files)
            let depLines = Synthetic.dep.split(separator: "\n").map(String.init)
                .filter { chosen.contains(String($0.prefix(while: { $0 != ":" }))) }
            #expect(result.modulesDep == depLines.map { $0 + "\n" }.joined())
            #expect(result.modulesOrder == Synthetic.paths.filter(chosen.contains).map { $0 + "\n" }.joined())
            #expect(result.modulesBuiltin == Synthetic.builtin)
            #expect(result.modulesAlias == """
                alias virtio:d00000001v* virtio_net
                alias crypto-crc32c crc32c_intel
                alias crc32c crc32c_intel
                alias crypto-crc32c crc32c_generic
                alias crc32c crc32c_generic

                """)
            #expect(result.modulesSoftdep == "softdep jbd2 pre: crypto-crc32c\n")
            #expect(result.metadataFiles.map(\.name) == ["modules.dep", "modules.builtin", "modules.order", "modules.alias", "modules.softdep"])
            // Every dependency named in the trimmed modules.dep is itself in it.
            for line in result.modulesDep.split(separator: "\n") {
                for dep in line.split(separator: ":")[1...].joined().split(separator: " ") {
                    #expect(chosen.contains(String(dep)))
                }
            }
        }
    }

    @Test("errors name the problem and give a hint")
    func errors() throws {
        try KmodTestSupport.withTemporaryDirectory { root in
            let dir = try Synthetic.write(into: root)
            let resolver = try ModuleResolver(modulesDirectory: dir)

            let cycle = moduleError { _ = try resolver.resolve(["e1000", "cyc_a"]) }
            #expect(cycle == .dependencyCycle(chain: ["cyc_a", "cyc_b", "cyc_a"], directory: dir.path))

            let unknown = moduleError { _ = try resolver.resolve(["virtio_nett"]) }
            #expect(unknown == .unknownModule(name: "virtio_nett", directory: dir.path, suggestions: ["virtio_net"]))
            #expect(unknown?.description.contains("did you mean 'virtio_net'?") == true)
            if case .unknownModule(_, _, let suggestions)? = moduleError({ _ = try resolver.resolve(["virtio_pc"]) }) {
                #expect(suggestions.first == "virtio_pci")
            } else { Issue.record("expected unknownModule") }
            if case .unknownModule(_, _, let suggestions)? = moduleError({ _ = try resolver.resolve(["zzzzzzzzzzzz"]) }) {
                #expect(suggestions.isEmpty)
            } else { Issue.record("expected unknownModule") }

            let ambiguous = moduleError { _ = try resolver.resolve(["crc32c"]) }
            #expect(ambiguous == .ambiguousAlias(name: "crc32c", directory: dir.path, candidates: ["crc32c_intel", "crc32c_generic"]))

            let ghost = moduleError { _ = try resolver.resolve(["ghost"]) }
            #expect(ghost == .moduleFileMissing(path: dir.appendingPathComponent("kernel/test/ghost.ko").path))

            let noDir = root.appendingPathComponent("lib/modules/none")
            if case .unreadable(let path, let reason)? = moduleError({ _ = try ModuleResolver(modulesDirectory: noDir) }) {
                #expect(path.hasSuffix("none/modules.dep"))
                #expect(reason.contains("No such file"))
            } else { Issue.record("expected unreadable") }

            #expect(moduleError { _ = try ModuleResolver(kernelVersion: "x", modulesDep: "a.ko: b.ko\n", source: "d") }
                == .missingDependency(module: "a", dependency: "b.ko", directory: "d"))
            #expect(moduleError { _ = try ModuleResolver(kernelVersion: "x", modulesDep: "a.ko:\nb.ko\n", source: "d") }
                == .malformedLine(path: "d/modules.dep", line: 2, text: "b.ko", reason: "no ':' after the module path"))
            // modules.alias is indexed on the first alias lookup, not before.
            let badAlias = try ModuleResolver(kernelVersion: "x", modulesDep: "a.ko:\n", modulesAlias: "# c\nalias x\n", source: "d")
            #expect(try badAlias.resolve(["a"]).files == ["a.ko"])
            #expect(moduleError { _ = try badAlias.resolve(["b"]) }
                == .malformedLine(path: "d/modules.alias", line: 2, text: "alias x", reason: "expected 'alias <pattern> <module>'"))
            for error in [cycle, unknown, ambiguous, ghost].compactMap({ $0 }) {
                #expect(error.description.contains("hint:"))
            }
        }
    }

    @Test("a long chain and a long cycle neither overflow the stack nor hang")
    func longChains() throws {
        let count = 20_000
        var chain = ""
        for i in 0..<count {
            // Not flattened: each module names only the next one.
            chain += i + 1 < count ? "m\(i).ko: m\(i + 1).ko\n" : "m\(i).ko:\n"
        }
        let resolver = try ModuleResolver(kernelVersion: "x", modulesDep: chain)
        let order = try resolver.resolve(["m0"]).modules.map(\.name)
        #expect(order.count == count)
        #expect(order.first == "m\(count - 1)")
        #expect(order.last == "m0")

        let cyclic = try ModuleResolver(kernelVersion: "x", modulesDep: chain.replacingOccurrences(of: "m\(count - 1).ko:\n", with: "m\(count - 1).ko: m0.ko\n"))
        if case .dependencyCycle(let names, _)? = moduleError({ _ = try cyclic.resolve(["m5"]) }) {
            #expect(names.count == count + 1)
            #expect(names.first == names.last)
        } else { Issue.record("expected a cycle") }
    }
}

// MARK: - The host's modules, with kmod as the oracle

@Suite("ModuleResolver on the host's modules")
struct HostModuleResolverTests {
    /// The running kernel's modules if installed, else the kernel in /boot's.
    static let directory: URL? = {
        var candidates: [String] = []
        var uts = utsname()
        if uname(&uts) == 0 {
            candidates.append(withUnsafeBytes(of: &uts.release) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) })
        }
        let boot = (try? FileManager.default.contentsOfDirectory(atPath: "/boot")) ?? []
        candidates += boot.filter { $0.hasPrefix("vmlinuz-") }.map { String($0.dropFirst(8)) }.sorted(by: KernelImage.versionPrecedes).reversed()
        return candidates.map { URL(fileURLWithPath: "/lib/modules/\($0)") }
            .first { FileManager.default.fileExists(atPath: $0.appendingPathComponent("modules.dep").path) }
    }()

    static let requested = ["virtio_net", "virtio_pci", "e1000", "e1000e", "igb", "ixgbe", "mlx5_core"]
    static let modprobe = ["/usr/sbin/modprobe", "/sbin/modprobe"].first { FileManager.default.isExecutableFile(atPath: $0) }

    @Test("network drivers resolve with dependencies first", .enabled(if: directory != nil, "no /lib/modules for this kernel"))
    func networkDrivers() throws {
        let dir = try #require(Self.directory)
        let clock = ContinuousClock()
        var resolver: ModuleResolver?
        let loadTime = try clock.measure { resolver = try ModuleResolver(modulesDirectory: dir) }
        let result = try #require(resolver).resolve(Self.requested)
        #expect(loadTime < .seconds(5), "reading the metadata took \(loadTime)")

        let names = result.modules.map(\.name)
        #expect(Set(names).count == names.count, "each module once")
        for name in Self.requested { #expect(names.contains(name) || result.skipped.contains { if case .builtIn(_, name) = $0 { return true }; return false }) }
        // virtio_net needs the virtio core and the failover pair before it.
        let position = Dictionary(uniqueKeysWithValues: names.enumerated().map { ($1, $0) })
        for dep in ["virtio_ring", "virtio", "failover", "net_failover"] {
            #expect(position[dep, default: .max] < position["virtio_net", default: -1], "\(dep) before virtio_net")
        }
        // Every modules.dep dependency of every module comes earlier.
        let depText = try String(contentsOf: dir.appendingPathComponent("modules.dep"), encoding: .utf8)
        var deps: [String: [String]] = [:]
        for line in depText.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            deps[String(parts[0])] = parts.count > 1 ? parts[1].split(separator: " ").map(String.init) : []
        }
        let filePosition = Dictionary(uniqueKeysWithValues: result.files.enumerated().map { ($1, $0) })
        for (index, file) in result.files.enumerated() {
            for dep in deps[file] ?? [] {
                #expect(filePosition[dep, default: .max] < index, "\(dep) before \(file)")
            }
            #expect(FileManager.default.fileExists(atPath: dir.appendingPathComponent(file).path))
        }
        // Insertion order: resolving all at once is resolving one by one.
        var concatenated: [String] = []
        for name in Self.requested {
            for file in try resolver!.resolve([name]).files where !concatenated.contains(file) { concatenated.append(file) }
        }
        #expect(result.files == concatenated)
    }

    /// `modprobe --show-depends` with an empty configuration directory, so
    /// only the modules directory's own files count.
    static func kmodOrder(_ name: String, in dir: URL, config: URL) -> [String]? {
        guard let modprobe else { return nil }
        let base = dir.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        guard let output = KmodTestSupport.run(modprobe, [
            "-C", config.path, "-d", base, "-S", dir.lastPathComponent, "--show-depends", name,
        ]) else { return nil }
        // kmod prints "insmod <base>/lib/modules/<version>/<path> " (with "//" for base "/").
        let marker = "/lib/modules/\(dir.lastPathComponent)/"
        return output.split(separator: "\n").compactMap { line in
            guard line.hasPrefix("insmod "), let range = line.range(of: marker) else { return nil }
            return line[range.upperBound...].split(separator: " ").first.map(String.init)
        }
    }

    @Test("matches modprobe --show-depends", .enabled(if: directory != nil && modprobe != nil, "needs /lib/modules and kmod"))
    func kmodOracle() throws {
        let dir = try #require(Self.directory)
        let resolver = try ModuleResolver(modulesDirectory: dir)
        try KmodTestSupport.withTemporaryDirectory { config in
            // ext4: a soft dependency through an alias for two modules.
            for name in Self.requested + ["ext4", "nfsd", "xfs"] {
                let expected = try #require(Self.kmodOrder(name, in: dir, config: config), "modprobe failed for \(name)")
                #expect(!expected.isEmpty)
                let ours = try resolver.resolve([name]).files
                #expect(ours == expected, "\(name): ours \(ours), kmod \(expected)")
            }
            // btrfs has several softdep lines; kmod 30 uses only the first
            // (kmod issue #33), this resolver all: kmod's order must be a
            // subsequence of ours, and ours may hold more.
            if let kmod = Self.kmodOrder("btrfs", in: dir, config: config) {
                let ours = try resolver.resolve(["btrfs"]).files
                var it = ours.makeIterator()
                #expect(kmod.allSatisfy { wanted in while let next = it.next() { if next == wanted { return true } }; return false },
                        "btrfs: ours \(ours), kmod \(kmod)")
                #expect(ours.count >= kmod.count)
            }
        }
    }
}
