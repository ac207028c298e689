import Foundation
import Testing
import TestSupport
import Yams
@testable import ImageBuildKit

/// `cloud_init:` in nodes.yaml and the NoCloud documents made from it: the merge, the documents as
/// cloud-init reads them (YAML parsed back, Debian's cloud-init converting the network config), the
/// located errors, and the kernel parameter.
@Suite struct CloudInitTests {
    static let inventoryText = """
        network:
          server: 10.77.0.1
          subnet: 10.77.0.0/24
          dns: [10.77.0.1, 10.77.0.2]
          domain: cluster.test
        defaults:
          image: minimal
          vars: {site: lab}
          cloud_init:
            enabled: true
            vendor_data: |
              #cloud-config
              timezone: UTC
        groups:
          gpu:
            interfaces:
              - {name: ib0, mtu: 2044}
            cloud_init:
              user_data: |
                #cloud-config
                write_files:
                  - path: /etc/site
                    content: "{{hostname}} at {{vars.site}}"
        nodes:
          - mac: "52:54:00:77:00:01"
            hostname: n1
            ip: 10.77.0.11
            group: gpu
            interfaces:
              - {name: ib0, address: 10.78.0.11/16, gateway: 10.78.0.1}
              - {mac: "52:54:00:88:00:01", name: data0, address: 192.168.5.11/24}
          - {mac: "52:54:00:77:00:02", hostname: n2, ip: 10.77.0.12, cloud_init: {enabled: false}}
          - {mac: "52:54:00:77:00:03", hostname: n3, cloud_init: {user_data: {content: "#!/bin/sh\\necho {{mac}}\\n", template: true}}}
        """

    let inventory = try! InventoryLoader.parse(inventoryText, file: "nodes.yaml")

    func identity(_ last: UInt8) throws -> NodeIdentity {
        try inventory.identity(of: inventory.node(mac: MACAddress(0x52, 0x54, 0, 0x77, 0, last))!)
    }

    func documents(_ last: UInt8, in inventory: Inventory? = nil) throws -> CloudInitDocuments {
        let inventory = inventory ?? self.inventory
        let node = inventory.node(mac: MACAddress(0x52, 0x54, 0, 0x77, 0, last))!
        return try CloudInit.documents(for: try inventory.identity(of: node), network: inventory.network,
                                       templates: NodeTemplates(inventory: inventory))
    }

    @Test func eachSubKeyComesFromTheNearestLevel() throws {
        let n1 = try identity(1), n2 = try identity(2), n3 = try identity(3)
        #expect(n1.cloudInit.enabled && !n2.cloudInit.enabled && n3.cloudInit.enabled)
        // vendor_data from defaults everywhere; user_data from the group, and n3's own replaces it.
        #expect(n1.cloudInit.vendorData?.location.line == 11 && n3.cloudInit.vendorData == n1.cloudInit.vendorData)
        #expect(n1.cloudInit.userData?.location.line == 19)
        #expect(n3.cloudInit.userData?.location.line == 33)
    }

    @Test func networkConfigIsVersion2WithTheBootAndExtraInterfaces() throws {
        let text = try documents(1).networkConfig
        let parsed = try #require(try Yams.load(yaml: text) as? [String: Any], "\(text)")
        #expect(parsed["version"] as? Int == 2)
        let ethernets = try #require(parsed["ethernets"] as? [String: [String: Any]], "\(text)")
        #expect(Set(ethernets.keys) == ["boot", "ib0", "data0"])
        let boot = ethernets["boot"]!
        #expect((boot["match"] as? [String: String]) == ["macaddress": "52:54:00:77:00:01"], "a MAC stays a string: \(text)")
        #expect(boot["dhcp4"] as? Bool == true)
        let nameservers = try #require(boot["nameservers"] as? [String: [String]])
        #expect(nameservers == ["addresses": ["10.77.0.1", "10.77.0.2"], "search": ["cluster.test"]])
        // ib0: the node's address and gateway, the group's MTU; matched by name.
        let ib0 = ethernets["ib0"]!
        #expect(ib0["match"] == nil && ib0["addresses"] as? [String] == ["10.78.0.11/16"] && ib0["mtu"] as? Int == 2044)
        #expect((ib0["routes"] as? [[String: String]]) == [["to": "0.0.0.0/0", "via": "10.78.0.1"]])
        // data0: matched by its MAC and named.
        let data0 = ethernets["data0"]!
        #expect((data0["match"] as? [String: String]) == ["macaddress": "52:54:00:88:00:01"])
        #expect(data0["set-name"] as? String == "data0" && data0["addresses"] as? [String] == ["192.168.5.11/24"])
        #expect(data0["mtu"] == nil && data0["routes"] == nil)
    }

    @Test func metaDataNamesTheNodeAndItsInstance() throws {
        let docs = try documents(1)
        let meta = try #require(try Yams.load(yaml: docs.metaData) as? [String: Any], "\(docs.metaData)")
        #expect(meta["local-hostname"] as? String == "n1.cluster.test")
        #expect(meta["hostname"] as? String == "n1.cluster.test")
        #expect(meta["instance-id"] as? String == docs.instanceID)
        #expect(docs.instanceID.wholeMatch(of: /imagebuild-n1-[0-9a-f]{12}/) != nil, "\(docs.instanceID)")
        // For cloud-init before 24.3: the named extra interfaces as /etc/network/interfaces text.
        #expect(meta["network-interfaces"] as? String == """
            auto ib0
            iface ib0 inet static
                address 10.78.0.11/16
                gateway 10.78.0.1
            auto data0
            iface data0 inet static
                address 192.168.5.11/24

            """)
        // Without a domain, the hostname alone; without named interfaces, no network-interfaces.
        let plain = try InventoryLoader.parse(Self.inventoryText.replacingOccurrences(of: "  domain: cluster.test\n", with: ""), file: "nodes.yaml")
        let n3 = try documents(3, in: plain)
        let meta3 = try #require(try Yams.load(yaml: n3.metaData) as? [String: Any])
        #expect(meta3["local-hostname"] as? String == "n3" && meta3["network-interfaces"] == nil, "\(n3.metaData)")
    }

    @Test func instanceIDIsStableAndChangesWithTheData() throws {
        let first = try documents(1).instanceID
        #expect(try documents(1).instanceID == first)
        #expect(try documents(3).instanceID != first)
        let edited = try InventoryLoader.parse(Self.inventoryText.replacingOccurrences(of: "vars: {site: lab}", with: "vars: {site: lab2}"), file: "nodes.yaml")
        #expect(try documents(1, in: edited).instanceID != first, "user-data changed")
        let moved = try InventoryLoader.parse(Self.inventoryText.replacingOccurrences(of: "address: 10.78.0.11/16", with: "address: 10.78.0.12/16"), file: "nodes.yaml")
        #expect(try documents(1, in: moved).instanceID != first, "network-config changed")
    }

    @Test func userAndVendorDataAreRenderedTemplates() throws {
        let n1 = try documents(1)
        #expect(String(decoding: n1.userData, as: UTF8.self) == """
            #cloud-config
            write_files:
              - path: /etc/site
                content: "n1 at lab"

            """)
        #expect(String(decoding: n1.vendorData, as: UTF8.self) == "#cloud-config\ntimezone: UTC\n")
        #expect(String(decoding: try documents(3).userData, as: UTF8.self) == "#!/bin/sh\necho 52:54:00:77:00:03\n")
        // A node with no user_data gets cloud-config that does nothing.
        let none = try InventoryLoader.parse(Self.inventoryText, file: "nodes.yaml")
        var identity = try none.identity(of: none.nodes[0])
        identity.cloudInit.userData = nil
        let docs = try CloudInit.documents(for: identity, network: none.network, templates: NodeTemplates(inventory: none))
        #expect(String(decoding: docs.userData, as: UTF8.self) == "#cloud-config\n{}\n")
        #expect(try Yams.load(yaml: "#cloud-config\n{}\n") as? [String: Any] != nil)
    }

    @Test func templateErrorsNameTheNodeAndTheLine() throws {
        let typo = Self.inventoryText.replacingOccurrences(of: "{{vars.site}}", with: "{{vars.sit}}")
        let inventory = try InventoryLoader.parse(typo, file: "nodes.yaml")
        let error = errorText { _ = try documents(1, in: inventory) }
        #expect(error.hasPrefix("nodes.yaml:19:18: user-data for node n1: unknown variable 'vars.sit'"), "\(error)")
        #expect(error.contains("did you mean 'vars.site'?"), "\(error)")
        // nodes check and publish render every cloud-init node: n3 has its own user_data, so only n1.
        let checked = errorText { try NodeFileChecks.check(inventory, root: nil) }
        #expect(checked.contains("user-data for node n1") && !checked.contains("node n3"), "\(checked)")

        let unclosed = Self.inventoryText.replacingOccurrences(of: "content: \"{{hostname}}", with: "content: \"{{#hostname}}")
        let syntax = errorText { try NodeFileChecks.check(try InventoryLoader.parse(unclosed, file: "nodes.yaml"), root: nil) }
        #expect(syntax.hasPrefix("nodes.yaml:24:1: template of user-data: a section is not closed"), "\(syntax)")
    }

    @Test(arguments: [
        ("user_data: \"hello\"", "nodes.yaml:4:16: user-data starts with 'hello', which cloud-init ignores"),
        ("user_data: {content: \"\"}", "user-data is empty"),
        ("vendor_data: {content: \"cloud-config: 1\"}", "vendor-data starts with 'cloud-config: 1'"),
        ("user_data: {content: \"#cloud-config\", source: x}", "user-data has 'content' or 'source', not both"),
        ("user_data: {path: /x}", "unknown key 'path'"),
        ("user_data: {content: \"#cloud-config\", secret: true}", "unknown key 'secret'"),
        ("enabled: yes please", "nodes.yaml:4:14:"),
        ("colour: red", "unknown key 'colour'"),
    ])
    func settingErrorsAreLocated(setting: String, message: String) throws {
        let text = """
            network: {server: 10.77.0.1, subnet: 10.77.0.0/24}
            defaults:
              cloud_init:
                \(setting)
            """
        let error = errorText { _ = try InventoryLoader.parse(text, file: "nodes.yaml") }
        #expect(error.contains(message), "\(error)")
        #expect(error.hasPrefix("nodes.yaml:"), "\(error)")
    }

    @Test func aSourceThatCloudInitWouldIgnoreIsAnErrorAtCheck() throws {
        let dir = TemporaryDirectory()
        let good = dir.write("user-data.yaml", "#cloud-config\nruncmd: [[touch, /run/{{hostname}}]]\n")
        let bad = dir.write("bad.yaml", "runcmd: [[true]]\n")
        func inventory(_ source: String) throws -> Inventory {
            try InventoryLoader.parse("""
                network: {server: 10.77.0.1, subnet: 10.77.0.0/24}
                defaults:
                  image: minimal
                  cloud_init: {enabled: true, user_data: {source: \(source)}}
                nodes:
                  - {mac: "52:54:00:77:00:01", hostname: n1}
                """, file: dir.path + "/nodes.yaml")
        }
        let fine = try inventory("user-data.yaml")
        try NodeFileChecks.check(fine, root: nil)
        let docs = try CloudInit.documents(for: try fine.identity(of: fine.nodes[0]), network: fine.network, templates: NodeTemplates(inventory: fine))
        #expect(String(decoding: docs.userData, as: UTF8.self) == "#cloud-config\nruncmd: [[touch, /run/n1]]\n")
        #expect(good.hasSuffix("user-data.yaml"))
        let error = errorText { try NodeFileChecks.check(try inventory("bad.yaml"), root: nil) }
        #expect(error.contains("nodes.yaml:4:42: user-data (\(bad)) for node n1 starts with 'runcmd: [[true]]'"), "\(error)")
        let missing = errorText { try NodeFileChecks.check(try inventory("missing.yaml"), root: nil) }
        #expect(missing.contains("cannot read \(dir.path)/missing.yaml for user-data"), "\(missing)")
    }

    @Test func theCommandLineNamesTheSeedOnlyWhenEnabled() throws {
        let plan = BootPlan(inventory: inventory, images: ["minimal": sampleImage("minimal")])
        func target(_ last: UInt8) throws -> BootTarget {
            guard case .boot(let target, _) = plan.answer(mac: MACAddress(0x52, 0x54, 0, 0x77, 0, last), ip: nil) else {
                throw ConfigError(ConfigLocation(file: "", line: 0, column: 0), "no boot")
            }
            return target
        }
        let seed = "ds=nocloud-net;s=http://10.77.0.1/cloud-init/52-54-00-77-00-01/"
        let line = plan.renderer.kernelCommandLine(try target(1))
        #expect(line.split(separator: " ").filter { $0.hasPrefix("ds=") } == [Substring(seed)], "\(line)")
        // The same token in pxelinux's APPEND and on iPXE's kernel line (neither splits at ';').
        #expect(plan.renderer.pxelinuxConfig(try target(1)).contains("  APPEND \(line)\n"))
        #expect(plan.renderer.ipxeScript(try target(1)).contains(" \(seed) "))
        #expect(!plan.renderer.kernelCommandLine(try target(2)).contains("ds="), "n2 turned it off")
        // Unregistered machines (a default or range target) never get one.
        let unknown = plan.answer(mac: MACAddress(0x52, 0x54, 0, 0x77, 0, 0x99), ip: nil)
        guard case .boot(let other, _) = unknown else { Issue.record("no default boot"); return }
        #expect(!plan.renderer.kernelCommandLine(other).contains("ds="))
        let off = try InventoryLoader.parse(Self.inventoryText.replacingOccurrences(of: "    enabled: true\n", with: ""), file: "nodes.yaml")
        let offPlan = BootPlan(inventory: off, images: ["minimal": sampleImage("minimal")])
        guard case .boot(let n1, _) = offPlan.answer(mac: MACAddress(0x52, 0x54, 0, 0x77, 0, 1), ip: nil) else { Issue.record("no boot"); return }
        #expect(!offPlan.renderer.kernelCommandLine(n1).contains("ds="), "off unless enabled")
    }

    @Test func publishJSONRecordsTheSeedAndADriftNamesAChange() throws {
        let images = ["minimal": sampleImage("minimal")]
        let index = BootPlan(inventory: inventory, images: images).files(generation: 1).index
        #expect(index.nodes.map(\.cloudInit) == ["/cloud-init/52-54-00-77-00-01/", nil, "/cloud-init/52-54-00-77-00-03/"])
        #expect(InventoryDrift(inventory: inventory, published: index).changed.isEmpty)
        // Turning it on or off changes the published command lines: nodes check says a publish is due.
        let toggled = try InventoryLoader.parse(Self.inventoryText.replacingOccurrences(of: "cloud_init: {enabled: false}", with: "cloud_init: {enabled: true}")
            .replacingOccurrences(of: "hostname: n3, cloud_init: {", with: "hostname: n3, cloud_init: {enabled: false, "), file: "nodes.yaml")
        #expect(InventoryDrift(inventory: toggled, published: index).changed == [
            "n2 (52:54:00:77:00:02): cloud-init off -> on", "n3 (52:54:00:77:00:03): cloud-init on -> off",
        ])
    }

    static let cloudInit = ProcessRunner.which("cloud-init")

    /// Debian's cloud-init reads the served network-config and renders it with its own renderers.
    @Test("cloud-init devel net-convert renders the network-config (networkd, eni, netplan)",
          .enabled(if: cloudInit != nil, "cloud-init is not installed (scripts/setup installs it)"))
    func debianCloudInitConvertsTheNetworkConfig() throws {
        let dir = TemporaryDirectory()
        let input = dir.write("network-config", try documents(1).networkConfig)
        for (kind, file, expected) in [
            ("networkd", "etc/systemd/network/10-cloud-init-ib0.network", ["Name=ib0", "Address=10.78.0.11/16", "MTUBytes=2044", "Gateway=10.78.0.1"]),
            ("eni", "etc/network/interfaces.d/50-cloud-init", ["iface ib0 inet static", "address 10.78.0.11/16", "mtu 2044", "address 192.168.5.11/24"]),
            ("netplan", "etc/netplan/50-cloud-init.yaml", ["10.78.0.11/16", "set-name: data0", "macaddress: 52:54:00:77:00:01"]),
        ] {
            let out = dir.path + "/" + kind
            try sh("cloud-init devel net-convert -p \(input) -k yaml -D debian -d \(out) -O \(kind) 2>&1")
            let rendered = try String(contentsOfFile: out + "/" + file, encoding: .utf8)
            for text in expected { #expect(rendered.contains(text), "\(kind) \(file) lacks '\(text)':\n\(rendered)") }
        }
        // networkd matches the boot interface by its MAC and asks DHCP there.
        let networkd = try FileManager.default.contentsOfDirectory(atPath: dir.path + "/networkd/etc/systemd/network")
        let boot = try networkd.map { try String(contentsOfFile: dir.path + "/networkd/etc/systemd/network/" + $0, encoding: .utf8) }
            .filter { $0.contains("MACAddress=52:54:00:77:00:01") }
        #expect(boot.count == 1 && boot[0].contains("DHCP=ipv4"), "\(networkd): \(boot)")
    }
}
