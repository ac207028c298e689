import BootProtocols
import Testing

@Suite struct DHCPAddressTests {
    @Test(arguments: [
        ("0.0.0.0", UInt32(0)), ("255.255.255.255", 0xFFFF_FFFF), ("192.0.2.1", 0xC000_0201),
        ("10.1.2.3", 0x0A01_0203), ("001.002.003.004", 0x0102_0304),
    ])
    func parsesDottedQuad(text: String, value: UInt32) throws {
        let address = try #require(IPv4Address(text))
        #expect(address.rawValue == value)
    }

    @Test(arguments: ["", "1.2.3", "1.2.3.4.5", "256.0.0.1", "1..2.3", ".1.2.3", "1.2.3.", "1.2.3.4 ", "a.b.c.d", "1234.1.1.1", "-1.2.3.4"])
    func rejectsMalformedDottedQuad(text: String) {
        #expect(IPv4Address(text) == nil)
    }

    @Test func printsAndHex() {
        let a = IPv4Address(192, 168, 1, 98)
        #expect(a.description == "192.168.1.98")
        #expect(a.hexString == "C0A80162")
        #expect(IPv4Address(10, 0, 0, 1).hexString == "0A000001")
        #expect(IPv4Address(a.description) == a)
    }

    @Test func subnetArithmeticAndStride() {
        let mask = IPv4Address(255, 255, 255, 0)
        #expect(IPv4Address(192, 0, 2, 7).isInSameSubnet(as: IPv4Address(192, 0, 2, 200), mask: mask))
        #expect(!IPv4Address(192, 0, 3, 7).isInSameSubnet(as: IPv4Address(192, 0, 2, 200), mask: mask))
        let pool = IPv4Address(192, 0, 2, 254)...IPv4Address(192, 0, 3, 1)
        #expect(pool.map(\.description) == ["192.0.2.254", "192.0.2.255", "192.0.3.0", "192.0.3.1"])
    }

    @Test(arguments: [
        "aa:bb:cc:dd:ee:ff", "AA:BB:CC:DD:EE:FF", "aa-bb-cc-dd-ee-ff", "Aa-bB-cC-Dd-eE-Ff",
    ])
    func parsesMACInAnyCaseAndSeparator(text: String) throws {
        let mac = try #require(MACAddress(text))
        #expect(mac.rawValue == 0xAABB_CCDD_EEFF)
        #expect(mac.description == "aa:bb:cc:dd:ee:ff")
        #expect(mac.hexhyp == "aa-bb-cc-dd-ee-ff")
    }

    @Test(arguments: [
        "", "aa:bb:cc:dd:ee", "aa:bb:cc:dd:ee:ff:00", "aa:bb-cc:dd:ee:ff", "aabb.ccdd.eeff", "gg:bb:cc:dd:ee:ff",
        "aa:bb:cc:dd:ee:f", "aa:bb:cc:dd:ee:fff", "aa::bb:cc:dd:ee:f",
    ])
    func rejectsMalformedMAC(text: String) {
        #expect(MACAddress(text) == nil)
    }

    @Test func macOctetsAndLeadingZeros() {
        let mac = MACAddress(0x02, 0, 0, 0, 0x0a, 0xc1)
        #expect(mac.description == "02:00:00:00:0a:c1")
        #expect(mac[0] == 2 && mac[4] == 0x0a && mac[5] == 0xc1)
        #expect(MACAddress(bytes: [0x02, 0, 0, 0, 0x0a, 0xc1, 0xff]) == mac)
        #expect(MACAddress(bytes: [1, 2, 3]) == nil)
        #expect(MACAddress(rawValue: 0xFFFF_0000_0000_0001) == MACAddress(rawValue: 1))
    }

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
