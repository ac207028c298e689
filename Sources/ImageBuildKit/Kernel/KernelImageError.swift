/// Why a kernel image, package or directory could not give a kernel version.
/// Each case names the file, what was wrong, why that matters, and a hint.
public enum KernelImageError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The file could not be opened or read (`reason` is the failing call and errno text).
    case unreadable(path: String, reason: String)
    /// The file ends before the bytes the boot header needs.
    case truncated(path: String, size: Int, needed: Int)
    /// No "HdrS" magic at 0x202 and no other format recognised.
    case notBzImage(path: String, found: [UInt8])
    /// A recognised format that is not a bzImage (ELF vmlinux, a compressed vmlinux, an arm64 Image).
    case unsupportedFormat(path: String, format: String)
    /// The header has no `kernel_version` pointer (protocol before 2.00, or the pointer is 0).
    case noVersionString(path: String, bootProtocol: UInt16)
    /// `kernel_version` + 0x200 points past the end of the file.
    case versionPointerOutOfRange(path: String, pointer: Int, offset: Int, size: Int)
    /// The string at the pointer is not a NUL-terminated, printable version.
    case malformedVersionString(path: String, offset: Int, reason: String)
    /// libarchive failed on a package (or its data member).
    case archive(path: String, message: String)
    /// A package without a `data.tar.*` member: not a Debian binary package.
    case noDataMember(path: String, members: [String])
    /// The package's data member holds no `boot/vmlinuz-*`.
    case noKernelInPackage(path: String, member: String)
    /// A directory without any `vmlinuz-*` file.
    case noKernelInDirectory(path: String, entries: [String])
    /// A directory without `vmlinuz-<version>` for the version asked for.
    case versionNotFound(path: String, version: String, available: [String])

    public var description: String {
        switch self {
        case .unreadable(let path, let reason):
            return "\(path): cannot read kernel image: \(reason) (hint: check the path and permissions)"
        case .truncated(let path, let size, let needed):
            return "\(path): truncated kernel image: \(size) bytes, the x86 boot header needs at least \(needed)"
                + " (hint: the file was cut short; copy it again from the kernel package)"
        case .notBzImage(let path, let found):
            let shown = found.map { String($0, radix: 16).leftPadded(to: 2) }.joined(separator: " ")
            return "\(path): not an x86 bzImage: expected magic \"HdrS\" at 0x202, found \(shown)"
                + " (hint: pass the vmlinuz-* file from /boot, or the linux-image .deb)"
        case .unsupportedFormat(let path, let format):
            return "\(path): \(format) is not supported: only an x86 bzImage carries its version in a boot header"
                + " (hint: pass the vmlinuz-* bzImage from /boot or from the linux-image .deb)"
        case .noVersionString(let path, let proto):
            return "\(path): bzImage has no kernel_version string (boot protocol \(KernelImage.protocolString(proto)))"
                + " (hint: the kernel is too old or built without one; name the version explicitly)"
        case .versionPointerOutOfRange(let path, let pointer, let offset, let size):
            return "\(path): kernel_version pointer 0x\(String(pointer, radix: 16)) points to offset"
                + " 0x\(String(offset, radix: 16)), past the end of the \(size)-byte file"
                + " (hint: the image is truncated or corrupt)"
        case .malformedVersionString(let path, let offset, let reason):
            return "\(path): kernel version string at 0x\(String(offset, radix: 16)) is malformed: \(reason)"
                + " (hint: the image is corrupt or not a Linux bzImage)"
        case .archive(let path, let message):
            return "\(path): cannot read package: \(message) (hint: is it a complete .deb?)"
        case .noDataMember(let path, let members):
            return "\(path): no data.tar.* member among [\(members.joined(separator: ", "))]"
                + " (hint: pass a Debian binary package such as linux-image-*.deb)"
        case .noKernelInPackage(let path, let member):
            return "\(path): \(member) contains no boot/vmlinuz-* file"
                + " (hint: use the linux-image-<version> package, not the meta or headers package)"
        case .noKernelInDirectory(let path, let entries):
            let shown = entries.prefix(10).joined(separator: ", ")
            return "\(path): no vmlinuz-* file in the directory (found: \(shown.isEmpty ? "nothing" : shown))"
                + " (hint: install a kernel package into the rootfs, e.g. linux-image-amd64)"
        case .versionNotFound(let path, let version, let available):
            return "\(path): no vmlinuz-\(version); available: \(available.isEmpty ? "none" : available.joined(separator: ", "))"
                + " (hint: name one of the available versions, or leave the version out to take the newest)"
        }
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
