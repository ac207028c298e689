import ArgumentParser
import Foundation
import ImageBuildKit

struct NodesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nodes",
        abstract: "Questions about nodes and what they boot.",
        subcommands: [Check.self, Explain.self])

    struct Explain: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show which files a node's boot loader would try, which one wins, and what it boots.",
            discussion: """
                pxelinux tries pxelinux.cfg/01-<mac>, then the IP in hex dropping one digit at
                a time (8 names), then default. This prints that order for the node (the IP
                from --ip, else from nodes.yaml), marks what exists in the root, and shows the
                iPXE path too. The order comes from pxelinuxLookupOrder, the function the
                pxelinux lookup-order tests pin down.

                'boots:' is the boot plan's answer (the rule publish, DHCP and the bootscript
                endpoint share: registered node, else the most specific range holding the IP,
                else the default image) with the images published in --root.
                """)

        @Argument(help: "The node's MAC address: aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff, aabb.ccdd.eeff or aabbccddeeff.")
        var mac: String

        @Option(help: "The node's IPv4 address (default: its fixed IP from nodes.yaml).")
        var ip: String?

        @Option(help: "The boot root.")
        var root: String = "tftpboot"

        @Option(help: "The node inventory (optional; for names and the fixed IP).")
        var nodes: String = "nodes.yaml"

        @Flag(help: "Print the answer as JSON.")
        var json = false

        /// What `explain` found, printed as text or JSON.
        struct Explanation: Encodable {
            struct Candidate: Encodable { var name: String; var exists: Bool; var used: Bool }
            var mac: String
            var hostname: String?
            var ip: String?
            var group: String?
            var inventory: String?
            /// What DHCP hands a BIOS machine by the `loader` setting (nil without an inventory).
            var biosLoader: String?
            var firmwareGets: String?
            var ipxeROMGets: String?
            /// The boot plan's answer with the published images: what the bootscript endpoint boots, and why.
            var boots: String?
            var pxelinux: [Candidate]
            /// The KERNEL, APPEND and comment lines of the file pxelinux would use.
            var pxelinuxUses: [String]
            var ipxe: [Candidate]
            var ipxeUses: String?
        }

        func run() throws {
            guard let mac = MACAddress(mac) else { fail(ValidationError("'\(self.mac)' is not a MAC address")) }
            var address: IPv4Address?
            if let ip {
                guard let parsed = IPv4Address(ip) else { fail(ValidationError("'\(ip)' is not an IPv4 address")) }
                address = parsed
            }
            let inventory = FileManager.default.fileExists(atPath: nodes) ? try? InventoryLoader.load(path: nodes) : nil
            let node = inventory?.node(mac: mac)
            address = address ?? node?.ip
            var answer = Explanation(mac: mac.description, hostname: node?.hostname, ip: address?.description, group: node?.group,
                                     inventory: inventory == nil ? nil : nodes, pxelinux: [], pxelinuxUses: [], ipxe: [])
            if let inventory {
                // The boot plan's answers: what DHCP hands a BIOS machine, and what the bootscript endpoint boots.
                let published = try? PublishIndex.read(root: root)
                let plan = published.map { BootPlan(inventory: inventory, index: $0) } ?? BootPlan(inventory: inventory)
                let bios = plan.biosBoot(for: node)
                answer.biosLoader = bios.loader?.rawValue ?? "not set"
                answer.firmwareGets = bios.firmwareFile
                answer.ipxeROMGets = bios.ipxeROMFile ?? "its boot script"
                switch plan.answer(mac: mac, ip: address) {
                case .boot(let target, let why): answer.boots = "\(target.image.name) \(target.image.digest) (\(why))"
                case .wait(let reason): answer.boots = "nothing yet: \(reason)"
                }
            }
            var winner: String?
            for name in pxelinuxLookupOrder(mac: mac, ip: address) {
                let exists = FileManager.default.fileExists(atPath: root + "/" + name)
                answer.pxelinux.append(.init(name: name, exists: exists, used: exists && winner == nil))
                if exists && winner == nil { winner = name }
            }
            if let winner, let text = try? String(contentsOfFile: root + "/" + winner, encoding: .utf8) {
                answer.pxelinuxUses = text.split(separator: "\n")
                    .filter { $0.contains("KERNEL") || $0.contains("APPEND") || $0.hasPrefix("#") }
                    .map { $0.trimmingCharacters(in: .whitespaces) }
            }
            let script = BootPlan.ipxeScriptPath(mac)
            let ownScript = FileManager.default.fileExists(atPath: root + "/" + script)
            answer.ipxe = [.init(name: script, exists: ownScript, used: ownScript),
                           .init(name: "ipxe/default.ipxe", exists: FileManager.default.fileExists(atPath: root + "/ipxe/default.ipxe"), used: !ownScript)]
            let used = root + "/" + (ownScript ? script : "ipxe/default.ipxe")
            if let text = try? String(contentsOfFile: used, encoding: .utf8), let line = text.split(separator: "\n").first(where: { $0.hasPrefix("# ") }) {
                answer.ipxeUses = String(line)
            }
            if json { printJSON(answer) } else { print(render(answer), terminator: "") }
        }

        func render(_ answer: Explanation) -> String {
            var out = ""
            if let hostname = answer.hostname {
                out += "\(answer.mac): \(hostname) in \(nodes)\(answer.ip.map { ", fixed IP \($0)" } ?? "")\(answer.group.map { ", group \($0)" } ?? "")\n"
            } else {
                out += "\(answer.mac): not in \(answer.inventory == nil ? "an inventory" : nodes)\n"
            }
            if answer.ip == nil { out += "  (no IP known: give --ip to include the hex-IP names)\n" }
            if let loader = answer.biosLoader, let firmware = answer.firmwareGets, let rom = answer.ipxeROMGets {
                out += "  BIOS boot (loader: \(loader)): firmware PXE gets \(firmware), an iPXE ROM gets \(rom); UEFI gets ipxe/ipxe.efi\n"
            }
            if let boots = answer.boots { out += "  boots: \(boots)\n" }
            out += "\npxelinux would try, in order:\n"
            for candidate in answer.pxelinux {
                let mark = candidate.used ? "found  <- used" : candidate.exists ? "found" : "-"
                out += "  \(candidate.name.padding(toLength: 36, withPad: " ", startingAt: 0)) \(mark)\n"
            }
            for line in answer.pxelinuxUses { out += "    \(line)\n" }
            if !answer.pxelinux.contains(where: \.used) { out += "  nothing found: run 'imagebuild publish' for this root\n" }
            out += "\niPXE: imagebuild serve answers with the 'boots:' line above; from a plain web server, ipxe/boot.ipxe chains:\n"
            for candidate in answer.ipxe {
                let mark = candidate.used ? (candidate.exists ? "found  <- used" : "<- used") : candidate.exists ? "" : "-"
                out += "  \(candidate.name.padding(toLength: 36, withPad: " ", startingAt: 0)) \(mark)\n"
            }
            if let line = answer.ipxeUses { out += "    \(line)\n" }
            return out
        }
    }
}

extension NodesCommand {
    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check a nodes.yaml without writing anything, and show what differs from the boot root.",
            discussion: """
                Reports every broken group, range and node at once (FILE:LINE:COLUMN: message),
                then, when --root holds a published generation, every image the inventory names
                that is not published, and which nodes and ranges were added, removed or changed
                since that publish (nodes added to nodes.yaml boot from the bootscript endpoint at
                once, but get pxelinux.cfg files only from the next publish). Exits 1 on errors.
                """)

        @Argument(help: "The node inventory.")
        var file: String = "nodes.yaml"

        @Option(help: "The boot root to compare with (skipped when nothing is published there).")
        var root: String = "tftpboot"

        @Flag(help: "Print the answer as JSON.")
        var json = false

        struct Report: Encodable {
            struct Problem: Encodable { var location: String; var message: String; var hint: String? }
            var file: String
            var ok: Bool
            var errors: [Problem]
            var nodes: Int?
            var ranges: Int?
            var groups: Int?
            /// The boot root's published generation, or nil when nothing is published there.
            var root: String?
            var published: InventoryDrift?
        }

        func run() throws {
            var problems: [ConfigError] = []
            var inventory: Inventory?
            do {
                inventory = try InventoryLoader.load(path: file)
            } catch let error as ConfigErrors {
                problems = error.errors
            } catch let error as ConfigError {
                problems = [error]
            } catch {
                fail(error)
            }
            // The files and cloud-init data the inventory names, as publish checks them.
            if let inventory {
                do {
                    try NodeFileChecks.check(inventory, root: root)
                } catch let error as ConfigErrors {
                    problems += error.errors
                } catch let error as ConfigError {
                    problems.append(error)
                }
            }
            let index = try? PublishIndex.read(root: root)
            if let inventory, let index {
                do {
                    try inventory.checkImages(Set(index.images.keys))
                } catch let error as ConfigErrors {
                    problems += error.errors
                } catch let error as ConfigError {
                    problems.append(error)
                }
            }
            let drift = inventory.flatMap { inventory in index.map { InventoryDrift(inventory: inventory, published: $0) } }
            let report = Report(
                file: file, ok: problems.isEmpty,
                errors: problems.map { .init(location: $0.location.description, message: $0.message, hint: $0.hint) },
                nodes: inventory?.nodes.count, ranges: inventory?.ranges.count, groups: inventory?.groups.count,
                root: index == nil ? nil : root, published: drift)
            if json {
                printJSON(report)
            } else {
                print(render(report, problems: problems), terminator: "")
            }
            if !problems.isEmpty { throw ExitCode.failure }
        }

        func render(_ report: Report, problems: [ConfigError]) -> String {
            var out = ""
            for problem in problems { out += "\(problem)\n" }
            if let nodes = report.nodes {
                out += "\(file): \(problems.isEmpty ? "OK" : "loads"): \(nodes) node\(nodes == 1 ? "" : "s"), "
                    + "\(report.ranges ?? 0) range\(report.ranges == 1 ? "" : "s"), \(report.groups ?? 0) group\(report.groups == 1 ? "" : "s")\n"
            } else {
                out += "\(file): \(problems.count) error\(problems.count == 1 ? "" : "s")\n"
            }
            guard let drift = report.published else {
                if report.nodes != nil { out += "\(root): nothing published to compare with\n" }
                return out
            }
            if drift.isEmpty {
                out += "\(root): generation \(drift.generation) publishes exactly this inventory\n"
                return out
            }
            out += "\(root): generation \(drift.generation) differs (run 'imagebuild publish --root \(root) --nodes \(file)'):\n"
            for line in drift.added { out += "  added    \(line)\n" }
            for line in drift.removed { out += "  removed  \(line)\n" }
            for line in drift.changed { out += "  changed  \(line)\n" }
            return out
        }
    }
}

/// Pretty, sorted JSON on standard output (the `--json` of every command).
func printJSON(_ value: some Encodable) {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    do {
        FileHandle.standardOutput.write(try encoder.encode(value) + Data("\n".utf8))
    } catch {
        fail(error)
    }
}
