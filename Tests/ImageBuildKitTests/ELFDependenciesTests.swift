import Foundation
import Testing
@testable import ImageBuildKit

/// Builds minimal ELF files (any class and byte order) with the program
/// headers ld.so reads: PT_LOAD covering the file, PT_INTERP, PT_DYNAMIC.
private struct ELFSpec {
    var is64 = true
    var little = true
    var machine: UInt16 = 62
    var type: UInt16 = 3
    var interp: String?
    var needed: [String] = []
    var rpath: String?
    var runpath: String?
    var soname: String?
    var dynamic = true

    func bytes() -> [UInt8] {
        let ehsize = is64 ? 64 : 52, phentsize = is64 ? 56 : 32, dynsize = is64 ? 16 : 8
        let base: UInt64 = is64 ? 0x400000 : 0x8048000
        let phnum = 1 + (interp == nil ? 0 : 1) + (dynamic ? 1 : 0)
        var strtab: [UInt8] = [0]
        func addString(_ s: String) -> UInt64 {
            let offset = UInt64(strtab.count)
            strtab += Array(s.utf8) + [0]
            return offset
        }
        var dyn: [(UInt64, UInt64)] = []
        for name in needed { dyn.append((1, addString(name))) }
        if let soname { dyn.append((14, addString(soname))) }
        if let rpath { dyn.append((15, addString(rpath))) }
        if let runpath { dyn.append((29, addString(runpath))) }
        let interpOffset = ehsize + phnum * phentsize
        let interpBytes: [UInt8] = interp.map { Array($0.utf8) + [0] } ?? []
        let strOffset = interpOffset + interpBytes.count
        var dynOffset = strOffset + strtab.count
        dynOffset = (dynOffset + 7) & ~7
        dyn.append((5, base + UInt64(strOffset)))
        dyn.append((10, UInt64(strtab.count)))
        dyn.append((0, 0))
        let total = dynOffset + (dynamic ? dyn.count * dynsize : 0)

        var out = [UInt8](repeating: 0, count: total)
        func put(_ value: UInt64, _ size: Int, _ at: Int) {
            for i in 0..<size {
                out[at + (little ? i : size - 1 - i)] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i)))
            }
        }
        func word(_ value: UInt64, _ at: Int) { put(value, is64 ? 8 : 4, at) }
        out[0...3] = [0x7F, 0x45, 0x4C, 0x46]
        out[4] = is64 ? 2 : 1
        out[5] = little ? 1 : 2
        out[6] = 1
        put(UInt64(type), 2, 16)
        put(UInt64(machine), 2, 18)
        put(1, 4, 20)
        word(UInt64(ehsize), is64 ? 32 : 28)  // e_phoff
        put(UInt64(ehsize), 2, is64 ? 52 : 40)
        put(UInt64(phentsize), 2, is64 ? 54 : 42)
        put(UInt64(phnum), 2, is64 ? 56 : 44)
        var ph = ehsize
        func program(_ type: UInt32, _ offset: Int, _ size: Int) {
            put(UInt64(type), 4, ph)
            if is64 {
                put(UInt64(offset), 8, ph + 8); put(base + UInt64(offset), 8, ph + 16)
                put(UInt64(size), 8, ph + 32); put(UInt64(size), 8, ph + 40)
            } else {
                put(UInt64(offset), 4, ph + 4); put(base + UInt64(offset), 4, ph + 8)
                put(UInt64(size), 4, ph + 16); put(UInt64(size), 4, ph + 20)
            }
            ph += phentsize
        }
        program(1, 0, total)
        if interp != nil { program(3, interpOffset, interpBytes.count) }
        if dynamic { program(2, dynOffset, dyn.count * dynsize) }
        out.replaceSubrange(interpOffset..<interpOffset + interpBytes.count, with: interpBytes)
        out.replaceSubrange(strOffset..<strOffset + strtab.count, with: strtab)
        if dynamic {
            for (i, (tag, value)) in dyn.enumerated() {
                word(tag, dynOffset + i * dynsize)
                word(value, dynOffset + i * dynsize + dynsize / 2)
            }
        }
        return out
    }
}

private func elfError(_ body: () throws -> Void) -> ELFDependencyError? {
    do { try body() } catch let error as ELFDependencyError { return error } catch { return nil }
    return nil
}

@Suite("ELFDependencies")
struct ELFDependenciesTests {
    @Test("parses ELF32/ELF64 in both byte orders", arguments: [
        (true, true, UInt16(62)), (true, false, UInt16(21)), (false, true, UInt16(3)), (false, false, UInt16(20)),
    ])
    func parse(is64: Bool, little: Bool, machine: UInt16) throws {
        let spec = ELFSpec(
            is64: is64, little: little, machine: machine, interp: "/lib/ld.so.1",
            needed: ["libc.so.6", "libm.so.6"], rpath: "/opt/a:/opt/b", runpath: "$ORIGIN/../lib", soname: "libx.so.1")
        try KmodTestSupport.withTemporaryDirectory { dir in
            let url = dir.appendingPathComponent("elf")
            try KmodTestSupport.write(spec.bytes(), to: url)
            let object = try ELFObject.read(path: url.path)
            #expect(object.elfClass == (is64 ? .elf64 : .elf32))
            #expect(object.littleEndian == little)
            #expect(object.machine == machine)
            #expect(object.interpreter == "/lib/ld.so.1")
            #expect(object.needed == ["libc.so.6", "libm.so.6"])
            #expect(object.rpath == ["/opt/a", "/opt/b"])
            #expect(object.runpath == ["$ORIGIN/../lib"])
            #expect(object.soname == "libx.so.1")
            #expect(!object.isStatic)
        }
    }

    @Test("a synthetic root: symlinks stay inside, $ORIGIN, ld.so.conf includes, wrong-ABI libraries skipped")
    func syntheticRoot() throws {
        try KmodTestSupport.withTemporaryDirectory { root in
            func file(_ path: String, _ spec: ELFSpec) throws {
                try KmodTestSupport.write(spec.bytes(), to: root.appendingPathComponent(String(path.dropFirst())))
            }
            func link(_ path: String, _ target: String) throws {
                try KmodTestSupport.symlink(root.appendingPathComponent(String(path.dropFirst())), to: target)
            }
            try file("/usr/bin/app", ELFSpec(
                interp: "/lib64/ld-linux-x86-64.so.2", needed: ["libfoo.so.1", "libbar.so.2", "libc.so.6"],
                runpath: "$ORIGIN/../lib/app"))
            try link("/bin", "usr/bin")
            try link("/lib64", "/usr/lib64")  // absolute: must mean <root>/usr/lib64
            try link("/usr/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
            try file("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", ELFSpec(soname: "ld-linux-x86-64.so.2"))
            try file("/lib/x86_64-linux-gnu/libc.so.6", ELFSpec(needed: ["ld-linux-x86-64.so.2"], soname: "libc.so.6"))
            try link("/usr/lib/app/libfoo.so.1", "libfoo.so.1.2.3")
            try file("/usr/lib/app/libfoo.so.1.2.3", ELFSpec(needed: ["libbaz.so.0", "libc.so.6"], soname: "libfoo.so.1"))
            try KmodTestSupport.write("include ld.so.conf.d/*.conf\n", to: root.appendingPathComponent("etc/ld.so.conf"))
            try KmodTestSupport.write("# baz\n/opt/baz  # trailing comment\n", to: root.appendingPathComponent("etc/ld.so.conf.d/baz.conf"))
            try KmodTestSupport.write("/opt/never\n", to: root.appendingPathComponent("etc/ld.so.conf.d/ignored.txt"))
            // An escape attempt: ../ beyond the root stays at the root.
            try link("/opt/baz/libbaz.so.0", "../../../../../../usr/lib/libbaz.so.0")
            try file("/usr/lib/libbaz.so.0", ELFSpec())
            // A 32-bit libbar earlier in the search path must be skipped.
            try file("/opt/baz/libbar.so.2", ELFSpec(is64: false, machine: 3))
            try file("/usr/lib/x86_64-linux-gnu/libbar.so.2", ELFSpec())

            var deps = ELFDependencies(root: root.path)
            #expect(try deps.searchDirectories() == ["/opt/baz"])
            let closure = try deps.closure(of: ["/bin/app"])
            #expect(closure.entries == [
                .symlink(path: "/bin", target: "usr/bin"),
                .symlink(path: "/lib64", target: "/usr/lib64"),
                .file(path: "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
                .file(path: "/lib/x86_64-linux-gnu/libc.so.6"),
                .symlink(path: "/opt/baz/libbaz.so.0", target: "../../../../../../usr/lib/libbaz.so.0"),
                .file(path: "/usr/bin/app"),
                .symlink(path: "/usr/lib/app/libfoo.so.1", target: "libfoo.so.1.2.3"),
                .file(path: "/usr/lib/app/libfoo.so.1.2.3"),
                .file(path: "/usr/lib/libbaz.so.0"),
                .file(path: "/usr/lib/x86_64-linux-gnu/libbar.so.2"),
                .symlink(path: "/usr/lib64/ld-linux-x86-64.so.2", target: "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
            ].sorted())
            #expect(closure.lookup("/lib64/ld-linux-x86-64.so.2") == "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
            #expect(closure.lookup("/bin/app") == "/usr/bin/app")
            #expect(closure.lookup("/opt/baz/libbar.so.2") == nil)
            // libc's DT_NEEDED on ld.so is satisfied by the interpreter already loaded.
            #expect(closure.dependencies.contains {
                $0.name == "ld-linux-x86-64.so.2" && $0.neededBy == "/lib/x86_64-linux-gnu/libc.so.6"
                    && $0.file == "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
            })
        }
    }

    @Test("RPATH is inherited from loaders unless DT_RUNPATH is present; defaults follow the ABI")
    func searchOrder() throws {
        try KmodTestSupport.withTemporaryDirectory { root in
            func file(_ path: String, _ spec: ELFSpec) throws {
                try KmodTestSupport.write(spec.bytes(), to: root.appendingPathComponent(String(path.dropFirst())))
            }
            try file("/app", ELFSpec(needed: ["liba.so"], rpath: "/opt/rp"))
            try file("/opt/rp/liba.so", ELFSpec(needed: ["libb.so"]))
            try file("/opt/rp/libb.so", ELFSpec())
            try file("/app2", ELFSpec(needed: ["liba2.so"], rpath: "/opt/rp"))
            try file("/opt/rp/liba2.so", ELFSpec(needed: ["libb.so"], runpath: "/nowhere"))
            // A 32-bit big-endian PowerPC binary finds libc in its multiarch directory.
            try file("/ppc", ELFSpec(is64: false, little: false, machine: 20, needed: ["libc.so.6"]))
            try file("/lib/powerpc-linux-gnu/libc.so.6", ELFSpec(is64: false, little: false, machine: 20))
            try file("/lib/x86_64-linux-gnu/libc.so.6", ELFSpec())

            var deps = ELFDependencies(root: root.path)
            #expect(try deps.closure(of: ["/app"]).files == ["/app", "/opt/rp/liba.so", "/opt/rp/libb.so"])
            #expect(try deps.closure(of: ["/ppc"]).files == ["/lib/powerpc-linux-gnu/libc.so.6", "/ppc"])
            let error = elfError { _ = try deps.closure(of: ["/app2"]) }
            if case .libraryNotFound(let name, let neededBy, let searched)? = error {
                #expect(name == "libb.so")
                #expect(neededBy == "/opt/rp/liba2.so")
                #expect(searched.first == "/nowhere")
                #expect(!searched.contains("/opt/rp"))
                #expect(searched.contains("/usr/lib/x86_64-linux-gnu"))
            } else {
                Issue.record("expected libraryNotFound, got \(String(describing: error))")
            }
        }
    }

    @Test("broken and truncated files fail cleanly")
    func broken() throws {
        let good = ELFSpec(interp: "/lib/ld.so", needed: ["libc.so.6"]).bytes()
        func patched(_ bytes: [UInt8], _ at: Int, _ values: [UInt8]) -> [UInt8] {
            var copy = bytes
            copy.replaceSubrange(at..<at + values.count, with: values)
            return copy
        }
        let cases: [(String, [UInt8], (ELFDependencyError) -> Bool)] = [
            ("empty", [], { if case .truncated = $0 { return true }; return false }),
            ("magic only", [0x7F, 0x45, 0x4C, 0x46], { if case .truncated = $0 { return true }; return false }),
            ("header cut", Array(good.prefix(40)), { if case .truncated(_, "ELF header", _, _) = $0 { return true }; return false }),
            ("program headers cut", Array(good.prefix(100)), { if case .truncated(_, "program header table", _, _) = $0 { return true }; return false }),
            ("dynamic cut", Array(good.prefix(good.count - 8)), { if case .truncated(_, "PT_DYNAMIC segment", _, _) = $0 { return true }; return false }),
            ("bad class", patched(good, 4, [9]), { if case .malformed = $0 { return true }; return false }),
            ("bad data", patched(good, 5, [0]), { if case .malformed = $0 { return true }; return false }),
            ("phoff past the end", patched(good, 32, [0xFF, 0xFF, 0xFF, 0x7F, 0, 0, 0, 0]), { if case .truncated = $0 { return true }; return false }),
            ("phoff overflows", patched(good, 32, [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]), { if case .truncated = $0 { return true }; return false }),
            ("tiny phentsize", patched(good, 54, [8, 0]), { if case .malformed = $0 { return true }; return false }),
            ("PN_XNUM", patched(good, 56, [0xFF, 0xFF]), { if case .unsupported = $0 { return true }; return false }),
            ("script", Array("#!/bin/sh\necho hi\n".utf8), { if case .notELF = $0 { return $0.description.contains("script") }; return false }),
            ("text", Array("hello world, not an executable".utf8), { if case .notELF = $0 { return true }; return false }),
        ]
        try KmodTestSupport.withTemporaryDirectory { dir in
            for (name, bytes, matches) in cases {
                let url = dir.appendingPathComponent(name.replacingOccurrences(of: " ", with: "-"))
                try KmodTestSupport.write(bytes, to: url)
                let error = elfError { _ = try ELFObject.read(path: url.path) }
                #expect(error.map(matches) == true, "\(name): got \(String(describing: error))")
                #expect(error?.description.contains(url.path) == true)
                #expect(error?.description.contains("hint:") == true)
            }
            // String table pointing outside the file: move DT_STRTAB far away.
            var spec = ELFSpec(needed: ["libc.so.6"])
            spec.interp = nil
            var bytes = spec.bytes()
            let strtabTag = bytes.count - 3 * 16  // entries: needed, strtab, strsz, null
            bytes.replaceSubrange(strtabTag + 8..<strtabTag + 16, with: [0, 0, 0, 0x10, 0, 0, 0, 0])
            let unmapped = dir.appendingPathComponent("unmapped")
            try KmodTestSupport.write(bytes, to: unmapped)
            if case .malformed(_, let reason)? = elfError({ _ = try ELFObject.read(path: unmapped.path) }) {
                #expect(reason.contains("DT_STRTAB"))
            } else { Issue.record("expected malformed DT_STRTAB") }

            // A real binary cut after its first 4 KiB.
            if let ls = FileManager.default.contents(atPath: "/bin/ls") {
                let cut = dir.appendingPathComponent("ls-cut")
                try KmodTestSupport.write(Array(ls.prefix(4096)), to: cut)
                if case .truncated? = elfError({ _ = try ELFObject.read(path: cut.path) }) {} else {
                    Issue.record("a cut /bin/ls must be reported as truncated")
                }
            }
            // Within a closure: the bad file is named.
            try KmodTestSupport.write(Array(good.prefix(100)), to: dir.appendingPathComponent("root/bin/broken"))
            var deps = ELFDependencies(root: dir.appendingPathComponent("root").path)
            if case .truncated(let path, _, _, _)? = elfError({ _ = try deps.closure(of: ["/bin/broken"]) }) {
                #expect(path.hasSuffix("root/bin/broken"))
            } else { Issue.record("expected truncated") }
            #expect(elfError { _ = try deps.closure(of: ["/bin/missing"]) } == .notFound(path: "/bin/missing", root: deps.root))
        }
    }

    @Test("a symlink loop inside the root is an error")
    func symlinkLoop() throws {
        try KmodTestSupport.withTemporaryDirectory { root in
            try KmodTestSupport.symlink(root.appendingPathComponent("bin/a"), to: "/bin/b")
            try KmodTestSupport.symlink(root.appendingPathComponent("bin/b"), to: "a")
            var deps = ELFDependencies(root: root.path)
            #expect(elfError { _ = try deps.closure(of: ["/bin/a"]) } == .symlinkLoop(path: "/bin/a", root: root.path))
        }
    }
}

// MARK: - Host binaries, with ldd as the oracle

@Suite("ELFDependencies on host binaries")
struct HostELFDependenciesTests {
    static let ldd = ["/usr/bin/ldd", "/bin/ldd"].first { FileManager.default.isExecutableFile(atPath: $0) }
    static let binaries = ["/bin/ls", "/usr/bin/curl", "/usr/bin/ssh", "/usr/sbin/ip"].filter { FileManager.default.fileExists(atPath: $0) }

    /// The paths ldd prints: "name => /path (0x...)" and "/path (0x...)".
    static func lddPaths(_ binary: String) -> [String]? {
        guard let ldd, let output = KmodTestSupport.run(ldd, [binary]) else { return nil }
        return output.split(separator: "\n").compactMap { line in
            let text = line.trimmingCharacters(in: .whitespaces)
            let path = text.contains("=>") ? String(text.split(separator: ">", maxSplits: 1)[1]) : text
            let first = path.trimmingCharacters(in: .whitespaces).split(separator: " ").first.map(String.init)
            return first?.hasPrefix("/") == true ? first : nil
        }
    }

    @Test("the closure covers everything ldd lists", .enabled(if: ldd != nil && !binaries.isEmpty, "needs ldd"))
    func lddOracle() throws {
        var deps = ELFDependencies(root: "/")
        let clock = ContinuousClock()
        var closure: ELFClosure?
        let elapsed = try clock.measure { closure = try deps.closure(of: Self.binaries) }
        let result = try #require(closure)
        #expect(elapsed < .seconds(2), "closure took \(elapsed)")
        for binary in Self.binaries {
            let listed = try #require(Self.lddPaths(binary), "ldd \(binary)")
            #expect(listed.contains { $0.contains("libc.so.6") })
            for path in listed + [binary] {
                let real = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
                #expect(result.lookup(path) == real, "\(binary): \(path) must lead to \(real) within the closure")
            }
            // And nothing beyond what the binary and its libraries need.
            let single = try deps.closure(of: [binary])
            #expect(single.files.count <= listed.count + 1, "\(binary): \(single.files) vs ldd \(listed)")
        }
        // The interpreter is reached through its symlink, which is part of the closure.
        #expect(result.symlinks.contains { $0.path.hasPrefix("/lib64") || $0.path.hasSuffix("ld-linux-x86-64.so.2") })
    }

    @Test("busybox-static has no dependencies", .enabled(if: FileManager.default.fileExists(atPath: "/bin/busybox")))
    func staticBusybox() throws {
        let object = try ELFObject.read(path: "/bin/busybox")
        #expect(object.isStatic)
        #expect(object.interpreter == nil)
        var deps = ELFDependencies(root: "/")
        let closure = try deps.closure(of: ["/bin/busybox"])
        let real = URL(fileURLWithPath: "/bin/busybox").resolvingSymlinksInPath().path
        #expect(closure.files == [real])
        #expect(closure.lookup("/bin/busybox") == real)
        #expect(closure.dependencies.isEmpty)
    }
}
