import NetworkAddresses
import Testing

@Suite struct MACAddressTests {
    /// Every spelling the one parser accepts: the four forms of `docs/nodes.md`, any case.
    @Test(arguments: [
        "52:54:00:ab:cd:01", "52:54:00:AB:CD:01", "52:54:00:Ab:cD:01",
        "52-54-00-ab-cd-01", "52-54-00-AB-cd-01",
        "5254.00ab.cd01", "5254.00AB.CD01",
        "525400abcd01", "525400ABCD01",
    ])
    func accepts(spelling: String) throws {
        let mac = try #require(MACAddress(spelling))
        #expect(mac.rawValue == 0x5254_00AB_CD01)
        #expect(mac.description == "52:54:00:ab:cd:01")
        // A substring parses the same (the `?mac=` query and journal fields are slices).
        #expect(MACAddress(("[" + spelling + "]").dropFirst().dropLast()) == mac)
    }

    /// And what it refuses: anything else, including near misses of each form.
    @Test(arguments: [
        ("", "empty"),
        ("52:54:00:ab:cd", "five octets"),
        ("52:54:00:ab:cd:01:02", "seven octets"),
        ("525400abcd0", "11 digits"),
        ("525400abcd012", "13 digits"),
        ("52:54-00:ab:cd:01", "mixed colon and hyphen"),
        ("52-54-00-ab-cd:01", "mixed hyphen and colon"),
        ("5254.00ab-cd01", "mixed dot and hyphen"),
        ("5254:00ab:cd01", "dotted groups with colons"),
        ("52.54.00.ab.cd.01", "dots between octets"),
        ("52:54:00:ab:cd:0g", "non-hex digit"),
        ("zz:zz:zz:zz:zz:zz", "non-hex"),
        ("525400abcd0g", "non-hex, no separator"),
        ("5254.00ab.cd0x", "non-hex, dotted"),
        ("0x525400abcd01", "0x prefix"),
        ("5:54:00:ab:cd:001", "one-digit octet"),
        ("52:54:0:ab:cd:01", "one-digit octet, short"),
        ("52::54:00:ab:cd:01", "empty octet"),
        ("52:54:00:ab:cd:01 ", "trailing space"),
        (" 52:54:00:ab:cd:01", "leading space"),
        ("52:54:00:ab:cd:01\n", "trailing newline"),
        ("52 54 00 ab cd 01", "spaces as separators"),
        ("52_54_00_ab_cd_01", "underscores as separators"),
        ("5254 00ab cd01", "spaced groups"),
        ("５２:54:00:ab:cd:01", "full-width digits"),
        ("ａａbbccddeeff", "full-width letters, 12 characters"),
        ("52:54:00:ab:cd:é", "non-ASCII byte in the right length"),
        (String(repeating: "a", count: 500), "500 characters"),
        (String(repeating: "52:54:00:ab:cd:01", count: 30), "a MAC repeated to 510 characters"),
    ])
    func refuses(spelling: String, why: String) {
        #expect(MACAddress(spelling) == nil, "\(why): '\(spelling)'")
    }

    @Test func printsTheFormsFilesAreNamedBy() {
        let mac = MACAddress(0x00, 0x0c, 0x29, 0x19, 0x29, 0xc0)
        #expect(mac.description == "00:0c:29:19:29:c0")
        #expect(mac.hyphenated == "00-0c-29-19-29-c0")
        #expect(mac.pxelinuxName == "01-00-0c-29-19-29-c0")
        #expect(MACAddress(mac.description) == mac && MACAddress(mac.hyphenated) == mac)
    }

    @Test func octetsBytesAndRawValue() {
        let mac = MACAddress(0x02, 0, 0, 0, 0x0a, 0xc1)
        #expect(mac.description == "02:00:00:00:0a:c1")
        #expect(mac[0] == 2 && mac[4] == 0x0a && mac[5] == 0xc1)
        #expect(MACAddress(bytes: [0x02, 0, 0, 0, 0x0a, 0xc1, 0xff]) == mac)
        #expect(MACAddress(bytes: [1, 2, 3]) == nil)
        #expect(MACAddress(rawValue: 0xFFFF_0000_0000_0001) == MACAddress(rawValue: 1))
        // Order is the byte order on the wire (what inventory listings sort by).
        #expect(!(MACAddress("00:00:00:00:01:00")! < MACAddress("00:00:00:00:00:ff")!))
        #expect(MACAddress("00:00:00:00:00:ff")! < MACAddress("00:00:00:00:01:00")!)
    }
}

@Suite struct IPv4AddressTests {
    @Test(arguments: [
        ("0.0.0.0", UInt32(0)), ("255.255.255.255", 0xFFFF_FFFF), ("192.0.2.1", 0xC000_0201),
        ("10.1.2.3", 0x0A01_0203), ("001.002.003.004", 0x0102_0304),
    ])
    func parsesDottedQuad(text: String, value: UInt32) throws {
        let address = try #require(IPv4Address(text))
        #expect(address.rawValue == value)
    }

    @Test(arguments: ["", "1.2.3", "1.2.3.4.5", "256.0.0.1", "1..2.3", ".1.2.3", "1.2.3.", "1.2.3.4 ", "a.b.c.d",
                      "1234.1.1.1", "-1.2.3.4", "+1.2.3.4", "١.2.3.4", "1.2.3.4/24"])
    func rejectsMalformedDottedQuad(text: String) {
        #expect(IPv4Address(text) == nil)
    }

    @Test func printsHexAndHTTPBase() {
        let a = IPv4Address(192, 168, 1, 98)
        #expect(a.description == "192.168.1.98")
        #expect(a.hex == "C0A80162")
        #expect(IPv4Address(10, 0, 0, 1).hex == "0A000001")
        #expect(IPv4Address(10, 77, 0, 11).hex == "0A4D000B")
        #expect(IPv4Address(a.description) == a)
        #expect(a.httpBase(port: 80) == "http://192.168.1.98")
        #expect(a.httpBase(port: 8080) == "http://192.168.1.98:8080")
    }

    @Test func strideForPools() {
        let pool = IPv4Address(192, 0, 2, 254)...IPv4Address(192, 0, 3, 1)
        #expect(pool.map(\.description) == ["192.0.2.254", "192.0.2.255", "192.0.3.0", "192.0.3.1"])
    }
}

@Suite struct IPv4NetworkTests {
    @Test func parsesAndClearsHostBits() throws {
        let network = try #require(IPv4Network("10.77.0.7/24"))
        #expect(network.description == "10.77.0.0/24")
        #expect(network.mask == IPv4Address(255, 255, 255, 0))
        #expect(network.broadcast == IPv4Address(10, 77, 0, 255))
        #expect(network.contains(IPv4Address(10, 77, 0, 200)) && !network.contains(IPv4Address(10, 77, 1, 0)))
        #expect(IPv4Network("0.0.0.0/0")?.contains(IPv4Address(203, 0, 113, 9)) == true)
        #expect(IPv4Network("10.0.0.1/32")?.broadcast == IPv4Address(10, 0, 0, 1))
    }

    @Test(arguments: ["10.0.0.0", "10.0.0.0/", "10.0.0.0/33", "10.0.0.0/+8", "10.0.0.0/-0", "10.0.0.0/024",
                      "10.0.0/8", "10.0.0.0/8/8", "/8", "10.0.0.0/ 8"])
    func refuses(text: String) {
        #expect(IPv4Network(text) == nil)
    }
}

@Suite struct PxelinuxLookupOrderTests {
    @Test func matchesTheDocumentedWalk() {
        // The console trace of PXELINUX for MAC 00:0c:29:19:29:c0, here with 192.168.1.98 (C0A80162).
        let order = pxelinuxLookupOrder(mac: MACAddress("00:0C:29:19:29:C0")!, ip: IPv4Address("192.168.1.98"))
        #expect(order == [
            "pxelinux.cfg/01-00-0c-29-19-29-c0",
            "pxelinux.cfg/C0A80162", "pxelinux.cfg/C0A8016", "pxelinux.cfg/C0A801", "pxelinux.cfg/C0A80",
            "pxelinux.cfg/C0A8", "pxelinux.cfg/C0A", "pxelinux.cfg/C0", "pxelinux.cfg/C",
            "pxelinux.cfg/default",
        ])
        #expect(pxelinuxLookupOrder(mac: MACAddress("aa:bb:cc:dd:ee:ff")!, ip: nil)
                == ["pxelinux.cfg/01-aa-bb-cc-dd-ee-ff", "pxelinux.cfg/default"])
        #expect(pxelinuxLookupOrder(mac: MACAddress("aa:bb:cc:dd:ee:ff")!, ip: IPv4Address("10.0.0.1"),
                                    uuid: "B8945908-D6A6-41A9-611D-74A6AB80B83D").first
                == "pxelinux.cfg/b8945908-d6a6-41a9-611d-74a6ab80b83d")
    }

    /// The walk imagebuild's GRUB entry point (`grub/grub.cfg`) runs, as Debian's GRUB 2.06 fetched it
    /// in `FirmwareBootTests`: entry point, per-MAC, dotted IP (GRUB's script has no hex), default.
    @Test func grubWalk() {
        #expect(grubLookupOrder(mac: MACAddress("00:0C:29:19:29:C0")!, ip: IPv4Address("192.168.1.98"))
                == ["grub.cfg", "grub.cfg-01-00-0c-29-19-29-c0", "grub.cfg-192.168.1.98", "grub.cfg-default"])
        #expect(grubLookupOrder(mac: MACAddress("aa:bb:cc:dd:ee:ff")!, ip: nil)
                == ["grub.cfg", "grub.cfg-01-aa-bb-cc-dd-ee-ff", "grub.cfg-default"])
    }

    /// A range's file (what publish writes for it) is on the walk of every address inside it, and of
    /// none outside it.
    @Test(arguments: [4, 8, 12, 16, 20, 24, 28])
    func aNetworksNameIsOnTheWalkOfItsAddresses(prefix: Int) throws {
        let network = try #require(IPv4Network(address: IPv4Address(192, 168, 1, 98), prefix: prefix))
        #expect(network.pxelinuxName.count == prefix / 4)
        let mac = MACAddress(rawValue: 1)
        for inside in [network.address, network.broadcast, IPv4Address(192, 168, 1, 98)] {
            #expect(pxelinuxLookupOrder(mac: mac, ip: inside).contains("pxelinux.cfg/" + network.pxelinuxName), "\(inside) in \(network)")
        }
        let outside = IPv4Address(rawValue: network.broadcast.rawValue &+ 1)
        #expect(!pxelinuxLookupOrder(mac: mac, ip: outside).contains("pxelinux.cfg/" + network.pxelinuxName), "\(outside) outside \(network)")
        #expect(IPv4Network("192.168.1.96/28")?.pxelinuxName == "C0A8016")
    }
}
