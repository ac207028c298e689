import ArgumentParser
import Foundation
import ImageBuildKit

struct NodesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nodes",
        abstract: "Questions about nodes and what they boot.",
        subcommands: [Explain.self])

    struct Explain: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show which files a node's boot loader would try, which one wins, and what it boots.",
            discussion: """
                pxelinux tries pxelinux.cfg/01-<mac>, then the IP in hex dropping one digit at
                a time (8 names), then default. This prints that order for the node (the IP
                from --ip, else from nodes.yaml), marks what exists in the root, and shows the
                iPXE path too. The order comes from the same function publish names files with.
                """)

        @Argument(help: "The node's MAC address (any usual spelling).")
        var mac: String

        @Option(help: "The node's IPv4 address (default: its fixed IP from nodes.yaml).")
        var ip: String?

        @Option(help: "The boot root.")
        var root: String = "tftpboot"

        @Option(help: "The node inventory (optional; for names and the fixed IP).")
        var nodes: String = "nodes.yaml"

        func run() throws {
            guard let mac = MAC(mac) else { fail(ValidationError("'\(self.mac)' is not a MAC address")) }
            var address: IPv4?
            if let ip {
                guard let parsed = IPv4(ip) else { fail(ValidationError("'\(ip)' is not an IPv4 address")) }
                address = parsed
            }
            let inventory = FileManager.default.fileExists(atPath: nodes) ? try? InventoryLoader.load(path: nodes) : nil
            let node = inventory?.node(mac: mac)
            address = address ?? node?.ip
            if let node {
                print("\(mac): \(node.hostname) in \(nodes)\(node.ip.map { ", fixed IP \($0)" } ?? "")\(node.group.map { ", group \($0)" } ?? "")")
            } else {
                print("\(mac): not in \(inventory == nil ? "an inventory" : nodes)")
            }
            if address == nil { print("  (no IP known: give --ip to include the hex-IP names)") }
            if let inventory {
                // What DHCP hands a BIOS machine, by the `loader` setting (the same resolution serve uses).
                let loader = inventory.loader(for: node)
                let firmware = loader == .ipxe ? "ipxe/undionly.kpxe" : loader == .pxelinux ? inventory.pxelinuxLoader : inventory.network.biosLoader
                let rom = loader == .pxelinux ? inventory.pxelinuxLoader : "its boot script"
                print("  BIOS boot (loader: \(loader?.rawValue ?? "not set")): firmware PXE gets \(firmware), an iPXE ROM gets \(rom); UEFI gets ipxe/ipxe.efi")
            }

            print("\npxelinux would try, in order:")
            var winner: String?
            for name in pxelinuxLookupOrder(mac: mac, ip: address) {
                let exists = FileManager.default.fileExists(atPath: root + "/" + name)
                let mark = exists ? (winner == nil ? "found  <- used" : "found") : "-"
                if exists && winner == nil { winner = name }
                print("  \(name.padding(toLength: 36, withPad: " ", startingAt: 0)) \(mark)")
            }
            if let winner, let text = try? String(contentsOfFile: root + "/" + winner, encoding: .utf8) {
                for line in text.split(separator: "\n") where line.contains("KERNEL") || line.contains("APPEND") || line.hasPrefix("#") {
                    print("    \(line.trimmingCharacters(in: .whitespaces))")
                }
            } else if winner == nil {
                print("  nothing found: run 'imagebuild publish' for this root")
            }

            print("\niPXE: ipxe/boot.ipxe chains:")
            let script = "ipxe/nodes/\(mac.hyphenated).ipxe"
            let ownScript = FileManager.default.fileExists(atPath: root + "/" + script)
            print("  \(script.padding(toLength: 36, withPad: " ", startingAt: 0)) \(ownScript ? "found  <- used" : "-")")
            print("  \("ipxe/default.ipxe".padding(toLength: 36, withPad: " ", startingAt: 0)) \(ownScript ? "" : "<- used")")
            let used = root + "/" + (ownScript ? script : "ipxe/default.ipxe")
            if let text = try? String(contentsOfFile: used, encoding: .utf8), let line = text.split(separator: "\n").first(where: { $0.hasPrefix("# ") }) {
                print("    \(line)")
            }
        }
    }
}
