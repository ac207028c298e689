import BootProtocols
import Testing

/// The DHCP registries print their names (the address types are tested in NetworkAddressesTests).
@Suite struct DHCPRegistryTests {
    @Test func registriesPrintNames() {
        #expect(DHCPOptionCode.messageType.description == "message type (53)")
        #expect(DHCPOptionCode(250).description == "option 250")
        #expect(DHCPClientArchitecture(7).description == "x64 UEFI (7)")
        #expect(DHCPClientArchitecture.arm64UEFIHTTP.description == "ARM 64-bit UEFI HTTP (19)")
        #expect(DHCPClientArchitecture(9).name == "EBC")
        #expect(DHCPClientArchitecture(1000).description == "architecture 1000")
        #expect(DHCPClientArchitecture(16).isHTTPBoot && !DHCPClientArchitecture(7).isHTTPBoot)
        #expect(DHCPMessageType.discover.description == "DISCOVER")
        #expect(DHCPMessageType(rawValue: 8) == .inform)
    }
}
