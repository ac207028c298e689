import Foundation
import Testing
@testable import ImageBuildKit

/// `bmc:` in nodes.yaml (merged field by field over the levels, the address a template) and the node
/// selection `power` and `reboot` take (`node[001-064]`, groups, `all`).
@Suite struct BMCSettingsTests {
    static let text = """
        network:
          server: 10.77.0.1
          subnet: 10.77.0.0/24
        defaults:
          image: minimal
          bmc: {protocol: ipmi, user: admin, password_file: secrets/bmc.pass, address: "10.78.{{ip_octets.3}}.{{ip_octets.4}}"}
        groups:
          gpu:
            bmc: {protocol: redfish, tls: insecure, boot_mode: uefi}
          compute: {}
        ranges:
          - cidr: 10.77.0.16/28
            bmc: {user: rackadmin}
        nodes:
          - {mac: "52:54:00:77:00:01", hostname: node001, ip: 10.77.0.11, group: gpu}
          - {mac: "52:54:00:77:00:02", hostname: node002, ip: 10.77.0.17, group: compute}
          - {mac: "52:54:00:77:00:03", hostname: node003, ip: 10.77.0.13, group: compute, bmc: {address: "{{hostname}}-ipmi.mgmt", port: 6230}}
          - {mac: "52:54:00:77:00:10", hostname: node010, group: compute}
          - {mac: "52:54:00:77:00:11", hostname: gpu, ip: 10.77.0.14}
        """

    let inventory = try! InventoryLoader.parse(text, file: "/etc/imagebuild/nodes.yaml")

    func target(_ hostname: String) throws -> BMCTarget {
        let node = try #require(inventory.nodes.first { $0.hostname == hostname })
        return try inventory.bmcTarget(for: node, templates: NodeTemplates(inventory: inventory))
    }

    @Test func levelsMergeFieldByFieldAndTheAddressIsATemplate() throws {
        let gpu = try target("node001")
        #expect(gpu == BMCTarget(hostname: "node001", address: "10.78.0.11", protocol: .redfish, user: "admin",
                                 passwordFile: "/etc/imagebuild/secrets/bmc.pass", tls: .insecure, bootMode: .uefi))
        #expect(gpu.endpoint == "redfish://admin@10.78.0.11")
        // The range of 10.77.0.17 sets the user; the rest comes from defaults.
        let ranged = try target("node002")
        #expect(ranged.user == "rackadmin" && ranged.protocol == .ipmi && ranged.address == "10.78.0.17" && ranged.tls == .verify)
        let named = try target("node003")
        #expect(named.address == "node003-ipmi.mgmt" && named.port == 6230 && named.endpoint == "ipmi://admin@node003-ipmi.mgmt:6230")
    }

    @Test func aTemplateOverDataTheNodeLacksIsALocatedError() {
        // node010 has no fixed address, so ip_octets is empty and the address is no address.
        #expect { try target("node010") } throws: { error in
            "\(error)" == "/etc/imagebuild/nodes.yaml:6:80: bmc address for node node010 is '10.78..', not a host name or IPv4 address (the template '10.78.{{ip_octets.3}}.{{ip_octets.4}}' rendered it)"
        }
    }

    @Test func missingFieldsNameTheNodeAndWhereToSetThem() throws {
        let inventory = try InventoryLoader.parse("""
            network: {server: 10.77.0.1, subnet: 10.77.0.0/24}
            defaults: {bmc: {address: 10.78.0.1}}
            nodes:
              - {mac: "52:54:00:77:00:01", hostname: n1}
            """, file: "nodes.yaml")
        #expect { try inventory.bmcTarget(for: inventory.nodes[0], templates: NodeTemplates(inventory: inventory)) } throws: { error in
            "\(error)" == "nodes.yaml:4:5: node n1 has no bmc user (set 'bmc: {user: ...}' on the node, its group, its range or in defaults)"
        }
    }

    @Test(arguments: [
        ("bmc: {password: hunter2}", "nodes.yaml:2:28: a password is never written in nodes.yaml (put it in a file (mode 0600) and name it: password_file)"),
        ("bmc: {protocol: smash}", "nodes.yaml:2:28: unknown bmc protocol 'smash' (ipmi (IPMI 2.0 lanplus) or redfish)"),
        ("bmc: {address: 'not an address!'}", "nodes.yaml:2:27: 'not an address!' is not a host name or IPv4 address (a template over the node's data works too: 10.78.{{ip_octets.3}}.{{ip_octets.4}})"),
        ("bmc: {address: 10.78.0.300}", "nodes.yaml:2:27: '10.78.0.300' is not a host name or IPv4 address (a template over the node's data works too: 10.78.{{ip_octets.3}}.{{ip_octets.4}})"),
        ("bmc: {tls: maybe}", "nodes.yaml:2:23: unknown tls 'maybe' (verify (the default), insecure, or a PEM file of the CA or certificate to pin)"),
        ("bmc: {boot_mode: legacy}", "nodes.yaml:2:29: unknown boot_mode 'legacy' (uefi or bios (or leave it out: the firmware's current mode))"),
        ("bmc: {port: 70000}", "nodes.yaml:2:24: 70000 is out of range 1...65535"),
        ("bmc: {adress: x}", "nodes.yaml:2:18: unknown key 'adress' (did you mean 'address'?)"),
    ])
    func badValuesAreLocated(line: String, expected: String) {
        let text = "network: {server: 10.77.0.1, subnet: 10.77.0.0/24}\ndefaults: {\(line)}\n"
        #expect { try InventoryLoader.parse(text, file: "nodes.yaml") } throws: { error in
            "\(error)" == expected
        }
    }

    @Test func aPinnedCertificateIsResolvedAgainstTheInventory() throws {
        let inventory = try InventoryLoader.parse("""
            network: {server: 10.77.0.1, subnet: 10.77.0.0/24}
            defaults: {bmc: {tls: certs/bmc-ca.pem}}
            """, file: "/srv/site/nodes.yaml")
        #expect(inventory.defaults.bmc.tls == .pinned("/srv/site/certs/bmc-ca.pem"))
    }

    @Test func checkFindsWhatPowerWouldRefuse() throws {
        let dir = NSTemporaryDirectory() + "bmc-check-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        FileManager.default.createFile(atPath: dir + "/open.pass", contents: Data("pw\n".utf8), attributes: [.posixPermissions: 0o644])
        FileManager.default.createFile(atPath: dir + "/good.pass", contents: Data("pw\n".utf8), attributes: [.posixPermissions: 0o600])
        let inventory = try InventoryLoader.parse("""
            network: {server: 10.77.0.1, subnet: 10.77.0.0/24}
            defaults:
              bmc: {user: admin, password_file: open.pass, address: "10.78.0.{{ip_octets.4}}"}
            groups:
              good: {bmc: {password_file: good.pass}}
            nodes:
              - {mac: "52:54:00:77:00:01", hostname: n1, ip: 10.77.0.11}
              - {mac: "52:54:00:77:00:02", hostname: n2, ip: 10.77.0.12}
              - {mac: "52:54:00:77:00:03", hostname: n3, ip: 10.77.0.13, group: good}
              - {mac: "52:54:00:77:00:04", hostname: n4, group: good}
            """, file: dir + "/nodes.yaml")
        #expect { try inventory.checkBMCs() } throws: { error in
            // The readable file once (not per node), n4's empty template; n3 is fine.
            "\(error)" == "\(dir)/nodes.yaml:3:37: password file \(dir)/open.pass has mode 0644: others can read it (chmod 600 \(dir)/open.pass)\n"
                + "\(dir)/nodes.yaml:3:57: bmc address for node n4 is '10.78.0.', not a host name or IPv4 address (the template '10.78.0.{{ip_octets.4}}' rendered it)"
        }
    }

    // MARK: - Node selection

    func names(_ arguments: [String]) throws -> [String] {
        try NodeSelection.select(arguments, in: inventory).map(\.hostname)
    }

    @Test func selectionTakesNamesRangesGroupsMACsAndAll() throws {
        #expect(try names(["node[001-003]"]) == ["node001", "node002", "node003"])
        #expect(try names(["node[001,003]", "node010"]) == ["node001", "node003", "node010"])
        #expect(try names(["compute"]) == ["node002", "node003", "node010"])
        #expect(try names(["node010,group:gpu"]) == ["node001", "node010"])
        #expect(try names(["52:54:00:77:00:02"]) == ["node002"])
        #expect(try names(["all"]) == ["node001", "node002", "node003", "node010", "gpu"])
        // nodes.yaml order, each node once.
        #expect(try names(["node003", "node[001-003]"]) == ["node001", "node002", "node003"])
    }

    @Test func aTypoIsAnErrorNotASmallerSelection() {
        #expect { try names(["node001", "nod002"]) } throws: { error in
            "\(error)" == "'nod002' is neither a node nor a group of /etc/imagebuild/nodes.yaml (did you mean 'node002'?)"
        }
        #expect { try names(["node[001-005]"]) } throws: { error in
            "\(error)" == "node[001-005]: 2 of its 5 names are not in /etc/imagebuild/nodes.yaml: node004, node005"
        }
        // `gpu` is a node and a group.
        #expect { try names(["gpu"]) } throws: { error in "\(error)" == "'gpu' is both a node and a group: write group:gpu for the group" }
        #expect { try names(["node[5-1]"]) } throws: { error in "\(error)" == "'node[5-1]': 5-1 runs backwards" }
        #expect { try names(["node[1-2"]) } throws: { error in "\(error)" == "'node[1-2': '[' without ']'" }
        #expect { try names(["n[0-99999999]"]) } throws: { error in "\(error)" == "'n[0-99999999]' names more than 100000 nodes" }
    }

    @Test func bracketsKeepTheWidthAndCombine() throws {
        #expect(try NodeSelection.expand("rack[1-2]-n[08-10]") == ["rack1-n08", "rack1-n09", "rack1-n10", "rack2-n08", "rack2-n09", "rack2-n10"])
        #expect(try NodeSelection.splitTopLevel("a,b[1-3,5],c") == ["a", "b[1-3,5]", "c"])
    }
}
