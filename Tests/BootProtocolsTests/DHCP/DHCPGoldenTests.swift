import BootProtocols
import Foundation
import TestSupport
import Testing

/// Golden tests over packets captured from real clients (see Fixtures/DHCP/README.md).
/// The `.txt` renderings are snapshots (`Snapshot`): `IMAGEBUILD_RECORD=1` re-records them.
enum DHCPFixtures {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures/DHCP", isDirectory: true)

    static let names: [String] = {
        guard let manifest = try? String(contentsOf: directory.appendingPathComponent("manifest.txt"), encoding: .utf8) else {
            return []
        }
        return manifest.split(separator: "\n").compactMap { line in
            line.hasPrefix("#") ? nil : line.split(separator: " ").first.map(String.init)
        }
    }()

    static func bytes(_ name: String) throws -> [UInt8] {
        let text = try String(contentsOf: directory.appendingPathComponent("\(name).hex"), encoding: .utf8)
        return try text.split(separator: "\n").filter { !$0.hasPrefix("#") }
            .flatMap { $0.split(separator: " ") }
            .map { try #require(UInt8($0, radix: 16), "bad hex byte \($0) in \(name).hex") }
    }

    static func message(_ name: String) throws -> DHCPMessage { try DHCPMessage(decoding: bytes(name)) }
}

@Suite struct DHCPGoldenTests {
    @Test func allFixturesAreListed() {
        #expect(DHCPFixtures.names.count >= 10)
    }

    @Test(arguments: DHCPFixtures.names)
    func renderingMatchesGolden(name: String) throws {
        let raw = try DHCPFixtures.bytes(name)
        let message = try DHCPMessage(decoding: raw)
        let rendering = "# \(raw.count) bytes\n" + message.description + "\n"
        Snapshot.expect(rendering, matches: DHCPFixtures.directory.appendingPathComponent("\(name).txt").path)
        // What we decode, we re-encode to the same message (within the sender's own size).
        let again = try DHCPMessage(decoding: message.encoded(maxMessageSize: max(576, raw.count + 28)))
        #expect(again == message)
    }

    @Test func ipxeDiscoverGetsTheBootScript() throws {
        let m = try DHCPFixtures.message("ipxe-bios-discover")
        #expect(m.messageType == .discover && m.options.userClassIsIPXE)
        #expect(m.options.clientArchitecture == .x86BIOS && m.options.vendorClassHasPrefix("PXEClient"))
        #expect(m.clientMAC?.description == "52:54:00:00:00:b1")
        let r = try dhcpReply(dhcpDecide(m))
        #expect(r.message.bootFileName == "http://192.0.2.1:8080/boot/v1/bootscript?mac=52:54:00:00:00:b1")
        #expect(r.message.xid == m.xid && r.message.yiaddr == IPv4Address(192, 0, 2, 101))
        #expect(r.destination.kind == .clientHardwareAddress)  // iPXE leaves the broadcast bit clear
    }

    @Test func edk2PXEDiscoverGetsIPXEEFI() throws {
        let m = try DHCPFixtures.message("edk2-x64-uefi-discover")
        #expect(m.options.clientArchitecture == .x64UEFI && !m.options.userClassIsIPXE)
        #expect(m.flags.contains(.broadcast))
        for p in [dhcpPolicy, dhcpProxyPolicy] {
            let r = try dhcpReply(dhcpDecide(m, policy: p))
            #expect(r.message.bootFileName == "ipxe/ipxe.efi" && r.message.siaddr == dhcpServer)
            #expect(r.destination.kind == .broadcast)
        }
    }

    @Test func edk2HTTPBootDiscoverGetsAURL() throws {
        let m = try DHCPFixtures.message("edk2-x64-uefi-http-discover")
        #expect(m.options.clientArchitecture == .x64UEFIHTTP && m.options.vendorClassHasPrefix("HTTPClient"))
        let r = try dhcpReply(dhcpDecide(m))
        #expect(r.message.bootFileName == "http://192.0.2.1:8080/ipxe/ipxe.efi")
        #expect(r.message.options.vendorClassIdentifier.map(Array.init) == Array("HTTPClient".utf8))
    }

    /// Captured in `FirmwareBootTests` against imagebuild serve at 10.77.0.1 (not this suite's 192.0.2.1).
    @Test func edk2HTTPBootRequestNamesItsServer() throws {
        let m = try DHCPFixtures.message("edk2-x64-uefi-http-request")
        #expect(m.messageType == .request && m.options.clientArchitecture == .x64UEFIHTTP && m.options.vendorClassHasPrefix("HTTPClient"))
        #expect(m.options.serverIdentifier == IPv4Address(10, 77, 0, 1))
        #expect(dhcpDecide(m) == .ignore(.requestForOtherServer(IPv4Address(10, 77, 0, 1))))
    }

    /// Our own replies as the real firmware took them: HTTP Boot gets option 60 `HTTPClient` and a URL;
    /// `loader: grub` gets the shim over TFTP as a firmware PXE offer.
    @Test func imagebuildRepliesTheFirmwareAccepted() throws {
        let http = try DHCPFixtures.message("imagebuild-offer-http")
        #expect(http.op == .bootReply && http.messageType == .offer)
        #expect(http.options.vendorClassIdentifier.map(Array.init) == Array("HTTPClient".utf8))
        #expect(http.options.bootfileName == "http://10.77.0.1:8080/ipxe/ipxe.efi")
        let shim = try DHCPFixtures.message("imagebuild-offer-shim")
        #expect(shim.messageType == .offer && shim.options.bootfileName == "grub/shimx64.efi")
        #expect(shim.options.vendorClassIdentifier.map(Array.init) == Array("PXEClient".utf8))
        #expect(shim.options.tftpServerName == "10.77.0.1" && shim.siaddr == IPv4Address(10, 77, 0, 1))
    }

    /// arm64: AAVMF's PXE client (architecture 11) gets Debian's signed GRUB over TFTP, its HTTP Boot
    /// client (19) the URL of the HTTP GRUB; and the offers AAVMF accepted from imagebuild serve.
    @Test func aavmfDiscoversGetArm64GRUB() throws {
        let pxe = try DHCPFixtures.message("aavmf-arm64-pxe-discover")
        #expect(pxe.options.clientArchitecture == .arm64UEFI && pxe.options.vendorClassHasPrefix("PXEClient:Arch:00011"))
        let http = try DHCPFixtures.message("aavmf-arm64-http-discover")
        #expect(http.options.clientArchitecture == .arm64UEFIHTTP && http.options.vendorClassHasPrefix("HTTPClient:Arch:00019"))
        let pxeReply = try dhcpReply(dhcpDecide(pxe)).message
        #expect(pxeReply.bootFileName == "grub/grubaa64.efi" && pxeReply.siaddr == dhcpServer)
        #expect(pxeReply.options.vendorClassIdentifier.map(Array.init) == Array("PXEClient".utf8))
        let httpReply = try dhcpReply(dhcpDecide(http)).message
        #expect(httpReply.bootFileName == "http://192.0.2.1:8080/grub/grubaa64-http.efi")
        #expect(httpReply.options.vendorClassIdentifier.map(Array.init) == Array("HTTPClient".utf8))

        let offerPXE = try DHCPFixtures.message("imagebuild-offer-arm64-pxe")
        #expect(offerPXE.messageType == .offer && offerPXE.options.bootfileName == "grub/grubaa64.efi")
        #expect(offerPXE.options.tftpServerName == "10.77.0.1" && offerPXE.siaddr == IPv4Address(10, 77, 0, 1))
        let offerHTTP = try DHCPFixtures.message("imagebuild-offer-arm64-http")
        #expect(offerHTTP.messageType == .offer && offerHTTP.options.bootfileName == "http://10.77.0.1:8080/grub/grubaa64-http.efi")
        #expect(offerHTTP.options.vendorClassIdentifier.map(Array.init) == Array("HTTPClient".utf8))
    }

    /// The Secure Boot firmware's PXE client and the UEFI iPXE that HTTP Boot started: both get the site's
    /// UEFI loader (the shim) when one is set, else iPXE's usual answers.
    @Test func secureBootAndUEFIIPXEDiscoversGetTheSiteLoader() throws {
        let secure = try DHCPFixtures.message("edk2-x64-secureboot-discover")
        let ipxe = try DHCPFixtures.message("ipxe-efi-discover")
        #expect(secure.options.clientArchitecture == .x64UEFI && !secure.options.userClassIsIPXE)
        #expect(ipxe.options.clientArchitecture == .x64UEFI && ipxe.options.userClassIsIPXE)
        #expect(try dhcpReply(dhcpDecide(secure)).message.bootFileName == "ipxe/ipxe.efi")
        #expect(try dhcpReply(dhcpDecide(ipxe)).message.bootFileName == "http://192.0.2.1:8080/boot/v1/bootscript?mac=52:54:00:77:00:16")
        var policy = dhcpPolicy
        policy.unknownClientUEFILoader = "grub/shimx64.efi"
        for m in [secure, ipxe] {
            #expect(try dhcpReply(dhcpDecide(m, policy: policy)).message.bootFileName == "grub/shimx64.efi")
        }
    }

    @Test func plainClientsAndProxyMode() throws {
        for name in ["udhcpc-discover", "dhclient-discover"] {
            let m = try DHCPFixtures.message(name)
            #expect(dhcpDecide(m, policy: dhcpProxyPolicy) == .ignore(.notPXEClient))
            let r = try dhcpReply(dhcpDecide(m))
            #expect(r.message.messageType == .offer && r.message.file.isEmpty && r.message.siaddr == .any)
        }
    }

    @Test func capturedRequestsAreSelecting() throws {
        // Both clients selected dnsmasq at 192.0.2.1, which is our server address in these tests.
        for name in ["udhcpc-request", "dhclient-request", "ipxe-bios-request"] {
            let m = try DHCPFixtures.message(name)
            #expect(m.messageType == .request && m.options.serverIdentifier == dhcpServer && m.ciaddr == .any)
            let requested = try #require(m.options.requestedIPAddress)
            // dnsmasq's range is not our pool: our policy refuses the address with a reason.
            #expect(try dhcpReply(dhcpDecide(m)).nakReason == .addressNotInPool(requested))
        }
    }

    @Test func dnsmasqRepliesDecode() throws {
        let offer = try DHCPFixtures.message("dnsmasq-offer")
        #expect(offer.op == .bootReply && offer.messageType == .offer && offer.options.serverIdentifier == dhcpServer)
        let ack = try DHCPFixtures.message("dnsmasq-ack-ipxe")
        // dnsmasq answers iPXE's request for option 67 with a NUL-terminated value and an empty file field.
        #expect(ack.messageType == .ack && ack.file.isEmpty && ack.options.bootfileName == "pxelinux.0\u{0}")
        #expect(ack.yiaddr == IPv4Address(192, 0, 2, 124) && ack.siaddr == dhcpServer)
        #expect(dhcpDecide(ack) == .ignore(.notABootRequest))
    }
}
