import Foundation
import Testing
@testable import ImageBuildKit

/// A synthetic bzImage: the x86 boot header fields KernelImage reads, and
/// the version string where `kernel_version` points.
private func bzImage(
    banner: String? = "6.1.0-9-amd64 (builder@example) #1 SMP Debian 6.1.27-1",
    magic: String = "HdrS", bootProtocol: UInt16 = 0x020F, pointer: Int? = 0x3A0, size: Int = 0x1000,
    terminate: Bool = true
) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: size)
    func put(_ value: [UInt8], at offset: Int) {
        for (i, b) in value.enumerated() where offset + i < bytes.count { bytes[offset + i] = b }
    }
    put([0x55, 0xAA], at: 0x1FE)
    put(Array(magic.utf8), at: 0x202)
    put([UInt8(bootProtocol & 0xFF), UInt8(bootProtocol >> 8)], at: 0x206)
    let pointer = pointer ?? 0
    put([UInt8(pointer & 0xFF), UInt8(pointer >> 8)], at: 0x20E)
    if let banner {
        put(Array(banner.utf8) + (terminate ? [0] : []), at: pointer + 0x200)
    }
    return bytes
}

private func kernelError(_ body: () throws -> Void) -> KernelImageError? {
    do { try body() } catch let error as KernelImageError { return error } catch { return nil }
    return nil
}

@Suite("KernelImage")
struct KernelImageTests {
    static let bootKernels: [String] = {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/boot")) ?? []
        return names.filter { $0.hasPrefix("vmlinuz-") }.sorted()
    }()

    @Test("real /boot kernels: the header version equals the file name suffix",
          .enabled(if: !bootKernels.isEmpty, "no /boot/vmlinuz-* on this machine"))
    func realBootKernels() throws {
        for name in Self.bootKernels {
            let image = try KernelImage.read(URL(fileURLWithPath: "/boot/\(name)"))
            #expect(image.version == String(name.dropFirst("vmlinuz-".count)))
            #expect(image.banner.hasPrefix(image.version + " "))
            #expect(image.bootProtocol >= 0x0200)
            #expect(image.packageMember == nil)
        }
        let newest = try KernelImage.locate(in: URL(fileURLWithPath: "/boot"))
        #expect(try KernelImage.read(bzImage: newest).version == String(newest.lastPathComponent.dropFirst(8)))
    }

    @Test("synthetic headers", arguments: [
        ("valid", bzImage(), "6.1.0-9-amd64"),
        ("version without banner", bzImage(banner: "6.1.0-9-amd64"), "6.1.0-9-amd64"),
        ("pointer at the highest offset", bzImage(pointer: 0xFFF0, size: 0xFFF0 + 0x200 + 64), "6.1.0-9-amd64"),
    ])
    func valid(_ name: String, _ bytes: [UInt8], _ version: String) throws {
        let image = try KernelImage.parse(prefix: bytes, fileSize: bytes.count, source: name)
        #expect(image.version == version)
        #expect(image.bootProtocol == 0x020F)
        try KmodTestSupport.withTemporaryDirectory { dir in
            let url = dir.appendingPathComponent("vmlinuz")
            try KmodTestSupport.write(bytes, to: url)
            #expect(try KernelImage.read(url) == image)
        }
    }

    @Test("broken headers fail with the matching error")
    func broken() throws {
        let xz: [UInt8] = [0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00] + [UInt8](repeating: 0, count: 600)
        let elf: [UInt8] = [0x7F, 0x45, 0x4C, 0x46, 2, 1, 1] + [UInt8](repeating: 0, count: 600)
        let cases: [(String, [UInt8], (KernelImageError) -> Bool)] = [
            ("bad magic", bzImage(magic: "HdrX"), { if case .notBzImage(_, let found) = $0 { return found == Array("HdrX".utf8) }; return false }),
            ("zeros", [UInt8](repeating: 0, count: 4096), { if case .notBzImage = $0 { return true }; return false }),
            ("truncated", Array(bzImage().prefix(0x100)), { if case .truncated(_, 0x100, 0x210) = $0 { return true }; return false }),
            ("empty", [], { if case .truncated(_, 0, _) = $0 { return true }; return false }),
            ("pointer past the end", bzImage(banner: nil, pointer: 0x2000, size: 0x1000), {
                if case .versionPointerOutOfRange(_, 0x2000, 0x2200, 0x1000) = $0 { return true }; return false }),
            ("no pointer", bzImage(banner: nil, pointer: 0), { if case .noVersionString(_, 0x020F) = $0 { return true }; return false }),
            ("old protocol", bzImage(bootProtocol: 0x0104), { if case .noVersionString(_, 0x0104) = $0 { return true }; return false }),
            ("unterminated at end of file", Array(bzImage(banner: "6.1.0", size: 0x3A0 + 0x200 + 5, terminate: false)), {
                if case .malformedVersionString(_, _, let why) = $0 { return why.contains("end of the file") }; return false }),
            ("binary garbage", bzImage(banner: "6.1\u{01}\u{02}"), { if case .malformedVersionString = $0 { return true }; return false }),
            ("empty string", bzImage(banner: ""), { if case .malformedVersionString = $0 { return true }; return false }),
            ("ELF vmlinux", elf, { if case .unsupportedFormat(_, let f) = $0 { return f.contains("ELF") }; return false }),
            ("xz vmlinux", xz, { if case .unsupportedFormat(_, let f) = $0 { return f.contains("xz") }; return false }),
        ]
        try KmodTestSupport.withTemporaryDirectory { dir in
            for (name, bytes, matches) in cases {
                let url = dir.appendingPathComponent(name.replacingOccurrences(of: " ", with: "-"))
                try KmodTestSupport.write(bytes, to: url)
                let error = kernelError { _ = try KernelImage.read(url) }
                #expect(error.map(matches) == true, "\(name): got \(String(describing: error))")
                #expect(error?.description.contains(url.path) == true, "\(name): error must name the file")
                #expect(error?.description.contains("hint:") == true)
            }
        }
        let missing = kernelError { _ = try KernelImage.read(URL(fileURLWithPath: "/nonexistent/vmlinuz")) }
        if case .unreadable(let path, let reason)? = missing {
            #expect(path == "/nonexistent/vmlinuz")
            #expect(reason.contains("No such file"))
        } else {
            Issue.record("expected unreadable, got \(String(describing: missing))")
        }
    }

    @Test("version order is numeric-aware", arguments: [
        ("6.1.0-9-amd64", "6.1.0-56-amd64"),
        ("6.1.0-56-amd64", "6.10.0-1-amd64"),
        ("6.1.0-9", "6.1.0-10"),
        ("5.10.0-28-amd64", "6.1.0-9-amd64"),
        ("6.1", "6.1.0"),
        ("6.1~rc1", "6.1"),
        ("6.1.0-1-amd64", "6.1.0-1-cloud-amd64"),
        ("6.1.0-007", "6.1.0-8"),
        ("6.1.99999999999999999999998", "6.1.99999999999999999999999"),
    ])
    func order(_ older: String, _ newer: String) {
        #expect(KernelImage.versionPrecedes(older, newer))
        #expect(!KernelImage.versionPrecedes(newer, older))
        #expect(!KernelImage.versionPrecedes(older, older))
    }

    @Test("locate picks the newest or the named vmlinuz-*")
    func locate() throws {
        try KmodTestSupport.withTemporaryDirectory { dir in
            let versions = ["6.1.0-9-amd64", "6.1.0-56-amd64", "6.10.0-1-amd64", "6.1.0-10-amd64"]
            for version in versions {
                try KmodTestSupport.write(bzImage(banner: version), to: dir.appendingPathComponent("vmlinuz-\(version)"))
                try KmodTestSupport.write("config", to: dir.appendingPathComponent("config-\(version)"))
            }
            try KmodTestSupport.write("x", to: dir.appendingPathComponent("vmlinuz.old"))
            try FileManager.default.createDirectory(at: dir.appendingPathComponent("vmlinuz-99.0-dir"), withIntermediateDirectories: true)

            let newest = try KernelImage.locate(in: dir)
            #expect(newest.lastPathComponent == "vmlinuz-6.10.0-1-amd64")
            #expect(try KernelImage.read(newest).version == "6.10.0-1-amd64")
            #expect(try KernelImage.locate(in: dir, version: "6.1.0-9-amd64").lastPathComponent == "vmlinuz-6.1.0-9-amd64")

            let missing = kernelError { _ = try KernelImage.locate(in: dir, version: "6.2.0-1-amd64") }
            #expect(missing == .versionNotFound(
                path: dir.path, version: "6.2.0-1-amd64",
                available: ["6.1.0-9-amd64", "6.1.0-10-amd64", "6.1.0-56-amd64", "6.10.0-1-amd64"]))

            let empty = dir.appendingPathComponent("empty")
            try FileManager.default.createDirectory(at: empty, withIntermediateDirectories: true)
            #expect(kernelError { _ = try KernelImage.locate(in: empty) } == .noKernelInDirectory(path: empty.path, entries: []))
        }
    }

    /// A synthetic arm64 Image: the "ARM\x64" magic at 0x38, and the banner `at` bytes in, after
    /// decoys a naive search would take (a format string, a marker without a release).
    static func arm64Image(banner: String?, at offset: Int, size: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0x41, count: size)
        bytes.replaceSubrange(0x38..<0x3C, with: Array("ARMd".utf8))
        let decoys = Array("Linux version %s\0Linux version \u{1}\0".utf8)
        bytes.replaceSubrange(0x1000..<0x1000 + decoys.count, with: decoys)
        if let banner {
            let text = Array("Linux version \(banner)\n\0".utf8)
            bytes.replaceSubrange(offset..<offset + text.count, with: text)
        }
        return bytes
    }

    @Test("an arm64 Image: the version from its banner, wherever it lies (across a read boundary too); none is a clear error")
    func arm64() throws {
        try KmodTestSupport.withTemporaryDirectory { dir in
            let banner = "6.1.0-57-arm64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14)) #1 SMP Debian 6.1.158-1"
            // 1 MiB - 20: the banner straddles the first 1 MiB read.
            for offset in [0x2000, (1 << 20) - 20, (3 << 20) + 5] {
                let file = dir.appendingPathComponent("Image-\(offset)")
                try KmodTestSupport.write(Self.arm64Image(banner: banner, at: offset, size: 4 << 20), to: file)
                let image = try KernelImage.read(file)
                #expect(image.version == "6.1.0-57-arm64", "banner at \(offset)")
                #expect(image.architecture == .arm64)
                #expect(image.banner == banner)
            }
            let none = dir.appendingPathComponent("Image-none")
            try KmodTestSupport.write(Self.arm64Image(banner: nil, at: 0, size: 1 << 20), to: none)
            let error = kernelError { _ = try KernelImage.read(none) }
            guard case .unsupportedFormat(_, let format)? = error else { Issue.record("expected unsupportedFormat, got \(String(describing: error))"); return }
            #expect(format.contains("arm64") && format.contains("banner"))
            // and a bzImage is amd64's
            let bz = dir.appendingPathComponent("bzImage")
            try KmodTestSupport.write(bzImage(), to: bz)
            #expect(try KernelImage.read(bz).architecture == .amd64)
        }
    }

    /// A .deb with a pax data.tar (and, when xz is installed, data.tar.xz)
    /// holding ./boot/vmlinuz-<version>.
    @Test("reads and extracts the kernel from a .deb")
    func debPackage() throws {
        let version = "6.1.0-99-test"
        var image = bzImage(banner: "\(version) (test@example) #1 SMP", size: 300_000)
        for i in 0x1000..<image.count { image[i] = UInt8(truncatingIfNeeded: i &* 7) }
        let dataTar = try paxArchive([
            ("./boot/", .directory, []),
            ("./boot/config-\(version)", .regular, Array("CONFIG_X=y\n".utf8)),
            ("./boot/vmlinuz-\(version)", .regular, image),
        ])
        let controlTar = try paxArchive([("./control", .regular, Array("Package: linux-image-test\n".utf8))])
        try KmodTestSupport.withTemporaryDirectory { dir in
            var variants: [(String, [UInt8])] = [("data.tar", dataTar)]
            let plain = dir.appendingPathComponent("data.tar")
            try KmodTestSupport.write(dataTar, to: plain)
            if KmodTestSupport.run("/usr/bin/xz", ["-k", "-0", plain.path]) != nil {
                variants.append(("data.tar.xz", Array(try Data(contentsOf: dir.appendingPathComponent("data.tar.xz")))))
            }
            for (member, bytes) in variants {
                let deb = dir.appendingPathComponent("linux-image-\(member).deb")
                try KmodTestSupport.write(KmodTestSupport.arArchive([
                    ("debian-binary", Array("2.0\n".utf8)), ("control.tar", controlTar), (member, bytes),
                ]), to: deb)
                let extracted = dir.appendingPathComponent("vmlinuz-from-\(member)")
                let read = try KernelImage.read(debPackage: deb, extractingImageTo: extracted)
                #expect(read.version == version)
                #expect(read.packageMember == "./boot/vmlinuz-\(version)")
                #expect(Array(try Data(contentsOf: extracted)) == image)
                #expect(try KernelImage.read(deb).version == version, "content sniffing finds the package")
            }
            #expect(variants.count == 2, "xz not installed: only the uncompressed data.tar was tested")

            let noKernel = dir.appendingPathComponent("headers.deb")
            try KmodTestSupport.write(KmodTestSupport.arArchive([
                ("debian-binary", Array("2.0\n".utf8)), ("control.tar", controlTar), ("data.tar", controlTar),
            ]), to: noKernel)
            #expect(kernelError { _ = try KernelImage.read(debPackage: noKernel) }
                == .noKernelInPackage(path: noKernel.path, member: "data.tar"))

            let noData = dir.appendingPathComponent("nodata.deb")
            try KmodTestSupport.write(KmodTestSupport.arArchive([("debian-binary", Array("2.0\n".utf8))]), to: noData)
            #expect(kernelError { _ = try KernelImage.read(debPackage: noData) }
                == .noDataMember(path: noData.path, members: ["debian-binary"]))

            let garbage = dir.appendingPathComponent("garbage.deb")
            try KmodTestSupport.write(Array("!<arch>\nthis is not an ar member header at all".utf8), to: garbage)
            switch kernelError({ _ = try KernelImage.read(garbage) }) {
            case .archive?, .noDataMember?: break  // how far libarchive gets is its business
            case let other: Issue.record("a corrupt package must fail as a package error, got \(String(describing: other))")
            }
        }
    }

    private func paxArchive(_ entries: [(String, EntryKind, [UInt8])]) throws -> [UInt8] {
        var out: [UInt8] = []
        let writer = try ArchiveWriter(format: .paxRestricted) { out.append(contentsOf: $0) }
        for (index, (path, kind, data)) in entries.enumerated() {
            try writer.write(
                path: path, kind: kind, permissions: kind == .directory ? 0o755 : 0o644, uid: 0, gid: 0,
                mtime: 0, inode: Int64(index + 1), size: Int64(data.count)
            ) { sink in try data.withUnsafeBytes(sink) }
        }
        try writer.close()
        return out
    }
}
