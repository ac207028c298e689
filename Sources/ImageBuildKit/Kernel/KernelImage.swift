import Foundation

/// The identity of a Linux kernel image: an x86 bzImage's from its boot header, an arm64 Image's
/// from the banner it carries.
///
/// The x86 boot protocol (Documentation/arch/x86/boot.rst) puts a setup header
/// at 0x1F1 with the magic "HdrS" at 0x202; since protocol 2.00 the 16-bit
/// `kernel_version` field at 0x20E points, minus 0x200, to a NUL-terminated
/// string such as "6.1.0-56-amd64 (debian-kernel@...) #1 SMP ...". That is the
/// only place a compressed kernel states its version without being unpacked,
/// and the version names the `/lib/modules/<version>` directory to take.
public struct KernelImage: Sendable, Equatable {
    /// The release, the banner up to its first space: "6.1.0-56-amd64".
    public let version: String
    /// The whole `kernel_version` string.
    public let banner: String
    /// The boot protocol version, e.g. 0x020F for 2.15.
    public let bootProtocol: UInt16
    /// For an image read from a package: the member it came from
    /// ("./boot/vmlinuz-6.1.0-56-amd64"); nil for a plain file.
    public let packageMember: String?
    /// What it runs on: a bzImage is x86-64's, an `Image` arm64's.
    public let architecture: Architecture

    public init(version: String, banner: String, bootProtocol: UInt16, packageMember: String? = nil, architecture: Architecture = .amd64) {
        self.version = version
        self.banner = banner
        self.bootProtocol = bootProtocol
        self.packageMember = packageMember
        self.architecture = architecture
    }

    static let magicOffset = 0x202
    static let protocolOffset = 0x206
    static let versionPointerOffset = 0x20E
    /// The header must reach past the `kernel_version` field.
    static let minimumHeader = 0x210
    /// The pointer is 16 bits, so the string starts before 0xFFFF + 0x200; a
    /// version string is well under 256 bytes. This bounds every read.
    static let maximumVersionLength = 256
    static let prefixLength = 0xFFFF + 0x200 + maximumVersionLength

    static func protocolString(_ proto: UInt16) -> String {
        "\(proto >> 8).\(proto & 0xFF)"
    }

    // MARK: - Pure parsing

    /// Parses the boot header from the first bytes of an image.
    ///
    /// - Parameters:
    ///   - prefix: the file's leading bytes; `prefixLength` bytes (or the whole
    ///     file if shorter) always suffice.
    ///   - fileSize: the whole file's size, to tell "pointer past the end"
    ///     from "prefix too short".
    ///   - source: the path named in errors.
    public static func parse(prefix: [UInt8], fileSize: Int, source: String) throws(KernelImageError) -> KernelImage {
        if let format = otherFormat(prefix) {
            throw .unsupportedFormat(path: source, format: format)
        }
        guard prefix.count >= minimumHeader else {
            throw .truncated(path: source, size: fileSize, needed: minimumHeader)
        }
        guard Array(prefix[magicOffset..<magicOffset + 4]) == Array("HdrS".utf8) else {
            throw .notBzImage(path: source, found: Array(prefix[magicOffset..<magicOffset + 4]))
        }
        let proto = u16(prefix, protocolOffset)
        let pointer = Int(u16(prefix, versionPointerOffset))
        guard proto >= 0x0200, pointer != 0 else {
            throw .noVersionString(path: source, bootProtocol: proto)
        }
        let start = pointer + 0x200
        guard start < fileSize else {
            throw .versionPointerOutOfRange(path: source, pointer: pointer, offset: start, size: fileSize)
        }
        guard start < prefix.count else {
            // The caller handed fewer bytes than the file has: report it as the
            // truncation it is from our point of view.
            throw .truncated(path: source, size: prefix.count, needed: start + 1)
        }
        let end = min(prefix.count, start + maximumVersionLength)
        guard let nul = prefix[start..<end].firstIndex(of: 0) else {
            throw .malformedVersionString(
                path: source, offset: start,
                reason: end == fileSize ? "no NUL before the end of the file" : "no NUL within \(maximumVersionLength) bytes")
        }
        let bytes = prefix[start..<nul]
        guard !bytes.isEmpty else {
            throw .malformedVersionString(path: source, offset: start, reason: "empty string")
        }
        guard bytes.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else {
            throw .malformedVersionString(path: source, offset: start, reason: "contains non-printable bytes")
        }
        let banner = String(decoding: bytes, as: UTF8.self)
        let version = String(banner.prefix(while: { $0 != " " }))
        guard !version.isEmpty else {
            throw .malformedVersionString(path: source, offset: start, reason: "starts with a space")
        }
        return KernelImage(version: version, banner: banner, bootProtocol: proto)
    }

    private static func u16(_ bytes: [UInt8], _ at: Int) -> UInt16 {
        UInt16(bytes[at]) | UInt16(bytes[at + 1]) << 8
    }

    /// Recognises formats that are kernels but not bzImages, so the error says
    /// what the file is rather than "bad magic".
    static func otherFormat(_ p: [UInt8]) -> String? {
        func starts(_ magic: [UInt8]) -> Bool { p.count >= magic.count && Array(p[0..<magic.count]) == magic }
        if starts([0x7F, 0x45, 0x4C, 0x46]) { return "an ELF vmlinux (uncompressed kernel)" }
        if starts([0x1F, 0x8B]) { return "a gzip-compressed file (vmlinux.gz?)" }
        if starts([0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00]) { return "an xz-compressed file (vmlinux.xz?)" }
        if starts([0x28, 0xB5, 0x2F, 0xFD]) { return "a zstd-compressed file (vmlinux.zst?)" }
        if starts(Array("BZh".utf8)) { return "a bzip2-compressed file" }
        if starts([0x02, 0x21, 0x4C, 0x18]) || starts([0x04, 0x22, 0x4D, 0x18]) { return "an lz4-compressed file" }
        if starts([0x89, 0x4C, 0x5A, 0x4F]) { return "an lzo-compressed file" }
        if starts(Array("!<arch>\n".utf8)) { return "an ar archive (read it as a package)" }
        if isArm64Image(p) { return "an arm64 Image inside a package (unpack it, or give kernel.path)" }
        return nil
    }

    // MARK: - Files

    /// Reads the version of a bzImage, or of the kernel inside a `.deb`.
    /// The kind is told by content, not by name.
    public static func read(_ url: URL) throws(KernelImageError) -> KernelImage {
        let file = try open(url)
        let head = try read(file, at: 0, count: 8, path: url.path)
        if head == Array("!<arch>\n".utf8) {
            return try read(debPackage: url)
        }
        return try read(bzImage: file, path: url.path)
    }

    /// Reads the version of a bzImage: one `pread` of at most `prefixLength` bytes.
    public static func read(bzImage url: URL) throws(KernelImageError) -> KernelImage {
        try read(bzImage: try open(url), path: url.path)
    }

    private static func read(bzImage file: PositionalFile, path: String) throws(KernelImageError) -> KernelImage {
        let prefix = try read(file, at: 0, count: prefixLength, path: path)
        if isArm64Image(prefix) { return try read(arm64Image: file, path: path) }
        return try parse(prefix: prefix, fileSize: file.size, source: path)
    }

    // MARK: - arm64

    /// An arm64 `Image` (Documentation/arch/arm64/booting.rst): a 64-byte header with the magic
    /// "ARM\x64" at 0x38, as Debian installs it (uncompressed, an EFI application too).
    static func isArm64Image(_ prefix: [UInt8]) -> Bool {
        prefix.count >= 0x40 && Array(prefix[0x38..<0x3C]) == Array("ARMd".utf8)
    }

    static let bannerMarker = Array("Linux version ".utf8)

    /// The version of an arm64 `Image`. Its header has no version field, so it is read from the
    /// `linux_banner` the image carries ("Linux version 6.1.0-50-arm64 (debian-kernel@…) …"): the first
    /// marker followed by a printable release and " (", found in one pass of 1 MiB reads.
    private static func read(arm64Image file: PositionalFile, path: String) throws(KernelImageError) -> KernelImage {
        let chunk = 1 << 20
        let overlap = bannerMarker.count + maximumVersionLength
        var offset = 0
        while offset < file.size {
            let bytes = try read(file, at: offset, count: min(chunk + overlap, file.size - offset), path: path)
            if let banner = banner(in: bytes) {
                return KernelImage(version: String(banner.prefix { $0 != " " }), banner: banner, bootProtocol: 0, architecture: .arm64)
            }
            offset += chunk
        }
        throw .unsupportedFormat(path: path, format: "an arm64 Image without a \"Linux version\" banner")
    }

    /// The banner after the first "Linux version " whose release is printable and ends in " (".
    static func banner(in bytes: [UInt8]) -> String? {
        let marker = bannerMarker
        var index = 0
        while index + marker.count < bytes.count {
            guard let start = bytes[index...].firstIndex(of: marker[0]) else { return nil }
            index = start + 1
            guard start + marker.count <= bytes.count, bytes[start..<start + marker.count].elementsEqual(marker) else { continue }
            let text = start + marker.count
            let end = min(bytes.count, text + maximumVersionLength)
            guard let stop = bytes[text..<end].firstIndex(where: { $0 < 0x20 || $0 >= 0x7F }) else { continue }
            let line = bytes[text..<stop]
            guard let space = line.firstIndex(of: 0x20), space > text, line[space...].starts(with: Array(" (".utf8)) else { continue }
            return String(decoding: line, as: UTF8.self)
        }
        return nil
    }

    private static func open(_ url: URL) throws(KernelImageError) -> PositionalFile {
        do { return try PositionalFile(path: url.path) } catch { throw .unreadable(path: url.path, reason: error.message) }
    }

    private static func read(_ file: PositionalFile, at: Int, count: Int, path: String) throws(KernelImageError) -> [UInt8] {
        do { return try file.read(at: at, count: count) } catch { throw .unreadable(path: path, reason: error.message) }
    }

    // MARK: - Debian packages

    /// Reads the version of the kernel in a Debian `linux-image-*` package.
    ///
    /// A .deb is an `ar` archive whose `data.tar.*` member holds
    /// `./boot/vmlinuz-<version>`. The member is spooled to a temporary file
    /// (the kernel package's is ~70 MB compressed) so memory stays bounded,
    /// and only the image's first `prefixLength` bytes are kept; with
    /// `destination`, the whole image is also written there on the way.
    public static func read(debPackage url: URL, extractingImageTo destination: URL? = nil) throws(KernelImageError) -> KernelImage {
        let path = url.path
        do {
            let data = try DebPackage(path: path).dataArchive()
            guard let inner = data.reader else { throw KernelImageError.noDataMember(path: path, members: data.members) }
            let memberName = "\(path)!\(data.members.last!)"
            while let entry = try inner.next() {
                let name = entry.path.hasPrefix("./") ? String(entry.path.dropFirst(2)) : entry.path
                guard entry.kind == .regular, name.hasPrefix("boot/vmlinuz-") else { continue }
                var prefix: [UInt8] = []
                prefix.reserveCapacity(min(Int(entry.size), prefixLength))
                let sink = try destination.map { try SpoolFile(creating: $0) }
                try inner.readData { chunk in
                    if prefix.count < prefixLength {
                        prefix.append(contentsOf: chunk.prefix(prefixLength - prefix.count))
                    }
                    try sink?.write(chunk)
                }
                try sink?.finish()
                let image = try parse(prefix: prefix, fileSize: Int(entry.size), source: "\(memberName)!\(entry.path)")
                return KernelImage(
                    version: image.version, banner: image.banner, bootProtocol: image.bootProtocol,
                    packageMember: entry.path)
            }
            throw KernelImageError.noKernelInPackage(path: path, member: data.members.last!)
        } catch let error as KernelImageError {
            throw error
        } catch let error as ArchiveError {
            throw .archive(path: path, message: error.message)
        } catch let error as PositionalFile.Failure {
            throw .unreadable(path: destination?.path ?? path, reason: error.message)
        } catch {
            throw .archive(path: path, message: "\(error)")
        }
    }

    // MARK: - Choosing a kernel in a directory

    /// Picks `vmlinuz-<version>` in a directory (a rootfs's /boot): the named
    /// version, or else the newest by `versionPrecedes`. Other files
    /// (`config-*`, `System.map-*`, `vmlinuz.old`) are ignored.
    public static func locate(in directory: URL, version: String? = nil) throws(KernelImageError) -> URL {
        let entries: [String]
        do {
            entries = try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted()
        } catch {
            throw .unreadable(path: directory.path, reason: (error as NSError).localizedDescription)
        }
        let versions = entries.compactMap { name -> String? in
            guard name.hasPrefix("vmlinuz-"), name.count > "vmlinuz-".count else { return nil }
            var isDirectory: ObjCBool = false
            let full = directory.appendingPathComponent(name).path
            guard FileManager.default.fileExists(atPath: full, isDirectory: &isDirectory), !isDirectory.boolValue else {
                return nil
            }
            return String(name.dropFirst("vmlinuz-".count))
        }.sorted(by: versionPrecedes)
        if let version {
            guard versions.contains(version) else {
                throw .versionNotFound(path: directory.path, version: version, available: versions)
            }
            return directory.appendingPathComponent("vmlinuz-\(version)")
        }
        guard let newest = versions.last else {
            throw .noKernelInDirectory(path: directory.path, entries: entries)
        }
        return directory.appendingPathComponent("vmlinuz-\(newest)")
    }

    /// Version order that compares digit runs as numbers and the rest as text,
    /// so 6.1.0-9 < 6.1.0-56 < 6.10.0-1 (plain string order gets both wrong).
    /// A `~` sorts before anything, even the end, as in Debian versions
    /// (6.1~rc1 < 6.1).
    public static func versionPrecedes(_ a: String, _ b: String) -> Bool {
        compareVersions(Array(a.utf8), Array(b.utf8)) < 0
    }

    static func compareVersions(_ a: [UInt8], _ b: [UInt8]) -> Int {
        func isDigit(_ c: UInt8) -> Bool { c >= 0x30 && c <= 0x39 }
        let tilde = UInt8(ascii: "~")
        var i = 0, j = 0
        while i < a.count || j < b.count {
            let ca = i < a.count ? a[i] : nil
            let cb = j < b.count ? b[j] : nil
            if ca == tilde || cb == tilde {
                if ca == cb { i += 1; j += 1; continue }
                return ca == tilde ? -1 : 1
            }
            guard let ca else { return -1 }
            guard let cb else { return 1 }
            if isDigit(ca) && isDigit(cb) {
                // Compare the digit runs as numbers without overflow:
                // skip leading zeros, then longer is larger, then by digits.
                var ei = i; while ei < a.count && isDigit(a[ei]) { ei += 1 }
                var ej = j; while ej < b.count && isDigit(b[ej]) { ej += 1 }
                var si = i; while si < ei - 1 && a[si] == 0x30 { si += 1 }
                var sj = j; while sj < ej - 1 && b[sj] == 0x30 { sj += 1 }
                if ei - si != ej - sj { return ei - si < ej - sj ? -1 : 1 }
                for (x, y) in zip(a[si..<ei], b[sj..<ej]) where x != y { return x < y ? -1 : 1 }
                i = ei; j = ej
                continue
            }
            if isDigit(ca) != isDigit(cb) {
                // "6.1" vs "6.1-rc": text after a number sorts after it.
                return isDigit(ca) ? -1 : 1
            }
            if ca != cb { return ca < cb ? -1 : 1 }
            i += 1; j += 1
        }
        return 0
    }
}
