/// Which file each client architecture boots, as paths in the boot root (served by TFTP and HTTP alike).
///
/// A PXE client gets the path over TFTP; a UEFI HTTP boot client gets `http://SERVER:PORT/` + path;
/// a value that already contains `://` is used as given.
public struct DHCPBootFileTable: Hashable, Sendable {
    public var files: [DHCPClientArchitecture: String]

    public init(_ files: [DHCPClientArchitecture: String]) { self.files = files }

    /// BIOS chainloads pxelinux; x86-64 UEFI (7, and 9 from firmware that follows RFC 4578's swapped
    /// values; 6 as the brief asks, though true IA32 UEFI needs a 32-bit build) gets iPXE; arm64 (11)
    /// gets GRUB, as the boot server publishes it (Debian has no arm64 iPXE); the HTTP boot values get
    /// the same binaries by URL.
    public static let standard = DHCPBootFileTable([
        .x86BIOS: "pxelinux.0",
        .x86UEFI: "ipxe/ipxe.efi",
        .x64UEFI: "ipxe/ipxe.efi",
        .ebc: "ipxe/ipxe.efi",
        .arm64UEFI: "grub/grubaa64.efi",
        .x64UEFIHTTP: "ipxe/ipxe.efi",
        .arm64UEFIHTTP: "grub/grubaa64-http.efi",
    ])

    public subscript(architecture: DHCPClientArchitecture) -> String? {
        get { files[architecture] }
        set { files[architecture] = newValue }
    }
}
