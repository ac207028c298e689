import ArgumentParser
import BootServer
import Foundation
import ImageBuildKit

/// Where the server's state is and which nodes.yaml it reads: --state-dir, else state_dir in --config,
/// else /var/lib/imagebuild (the rule `serve` and `nodes known-hosts` share).
struct ServerStateOptions: ParsableArguments {
    @Option(help: "The node inventory (default: 'nodes' in --config, else nodes.yaml).")
    var nodes: String?

    @Option(help: "imagebuild serve's settings file (server.yaml): its state_dir and nodes are used.")
    var config: String?

    @Option(help: "The server's state directory, where discovery and bindings are kept (default: state_dir in --config, else /var/lib/imagebuild).")
    var stateDir: String?

    func resolved() throws -> (nodes: String, stateDirectory: String) {
        var flags = ServerConfigFile()
        flags.nodes = nodes
        flags.stateDirectory = stateDir
        let settings = try ServerConfigFile.merged(flags: flags, configPath: config)
        return (settings.nodes ?? "nodes.yaml", settings.resolvedStateDirectory)
    }
}

/// nodes.yaml with the server's bindings merged, as `serve` reads it; the merge's notes (and unreadable
/// journal lines) go to stderr.
func inventoryWithBindings(nodes: String, stateDirectory: String) throws -> Inventory {
    let inventory = try InventoryLoader.load(path: nodes)
    let contents = try NodeBindingJournal.read(path: NodeBindingJournal.path(inStateDirectory: stateDirectory))
    let (merged, notes) = inventory.merging(contents.bindings)
    for problem in contents.problems { FileHandle.standardError.write(Data("imagebuild: warning: \(problem)\n".utf8)) }
    for note in notes { FileHandle.standardError.write(Data("imagebuild: warning: \(note)\n".utf8)) }
    return merged
}

extension NodesCommand {
    struct Discovered: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the machines DHCP saw that nodes.yaml does not list, and the bindings.",
            discussion: """
                'imagebuild serve' records every DHCP request from a MAC that nodes.yaml (and
                the bindings) do not know: first and last seen, how many requests, client
                architecture (option 93), vendor class (60), user class (77), the host name
                it asked for (12), and for relayed requests the relay (giaddr) with option
                82's circuit id and remote id. They are kept in STATE_DIR/discovery/
                discovered, which this reads (the server need not be running; the last
                10 s of last-seen times and request counts may not be written yet).

                Then it lists the bindings (STATE_DIR/discovery/bindings): machines bound to a
                hostname and address by discover: in nodes.yaml or by 'nodes adopt', and
                whether each is in force (nodes.yaml wins a conflict, and this says which).
                """)

        @OptionGroup var server: ServerStateOptions

        @Flag(help: "Print the listing as JSON (the shape of GET /api/v1/discovered).")
        var json = false

        func run() throws {
            let listing: DiscoveryListing
            do {
                let (nodes, state) = try server.resolved()
                let inventory = FileManager.default.fileExists(atPath: nodes) ? try InventoryLoader.load(path: nodes) : nil
                let read = try DiscoveryListing.read(stateDirectory: state, inventory: inventory)
                for problem in read.problems { FileHandle.standardError.write(Data("imagebuild: warning: \(problem)\n".utf8)) }
                listing = read.listing
            } catch {
                fail(error)
            }
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
                print(String(decoding: try encoder.encode(listing), as: UTF8.self))
                return
            }
            print(Self.table(listing), terminator: "")
        }

        static func table(_ listing: DiscoveryListing) -> String {
            func time(_ seconds: Int64) -> String {
                let formatter = DateFormatter()
                formatter.locale = Locale(identifier: "en_US_POSIX")
                formatter.timeZone = TimeZone(identifier: "UTC")
                formatter.dateFormat = "yyyy-MM-dd HH:mm:ss"
                return formatter.string(from: Date(timeIntervalSince1970: TimeInterval(seconds)))
            }
            var out = ""
            if listing.machines.isEmpty {
                out += "no unknown machines seen\n"
            } else {
                let rows = [["MAC", "FIRST SEEN (UTC)", "LAST SEEN (UTC)", "REQ", "ARCH", "VENDOR CLASS", "RELAY", "CIRCUIT ID", "REMOTE ID", "BOUND AS"]]
                    + listing.machines.map { m in
                        [m.mac, time(m.firstSeen), time(m.lastSeen), "\(m.requests)", m.architecture ?? "-", m.vendorClass ?? "-",
                         m.relay ?? "-", m.circuitID ?? "-", m.remoteID ?? "-", m.boundAs ?? "-"]
                    }
                out += columns(rows)
            }
            if !listing.bindings.isEmpty {
                out += "\nbindings:\n"
                let rows = [["MAC", "HOSTNAME", "IP", "GROUP", "BY", "BOUND (UTC)", "STATUS"]]
                    + listing.bindings.map { b in
                        [b.mac, b.hostname, b.ip ?? "-", b.group ?? "-", b.origin, time(b.boundAt), b.inForce ? "in force" : "ignored"]
                    }
                out += columns(rows)
                for binding in listing.bindings where binding.note != nil { out += "  \(binding.note!)\n" }
            }
            return out
        }

        static func columns(_ rows: [[String]]) -> String {
            let widths = rows[0].indices.map { column in rows.map { $0[column].count }.max() ?? 0 }
            return rows.map { row in
                row.enumerated().map { $0.offset == row.count - 1 ? $0.element : $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0) }
                    .joined(separator: "  ")
            }.joined(separator: "\n") + "\n"
        }
    }

    struct Adopt: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Bind a machine nodes.yaml does not list to a hostname (and address) without editing nodes.yaml.",
            discussion: """
                Appends a binding to STATE_DIR/discovery/bindings (fsynced before this returns;
                the journal is locked while it is checked and written, so the server and this
                never give one name or address twice). A running server reads it within its
                poll interval (or at SIGHUP) and from then on the machine is a node: its fixed
                address and hostname from DHCP, its boot script, 'nodes explain'. Run
                'imagebuild publish' to give it its per-node files (pxelinux.cfg/01-<mac>,
                overlays). Adopting a MAC bound before replaces that binding.

                Refused, with where the other holder is: a MAC nodes.yaml lists (nodes.yaml
                wins: edit it there), a hostname or address a node or another binding has, an
                address outside the subnet or inside the dynamic pool, an unknown group.

                Example:
                  imagebuild nodes adopt 52:54:00:12:34:56 --hostname gpu07 --ip 10.77.0.77 --group gpu --state-dir state
                """)

        @Argument(help: "The machine's MAC address.")
        var mac: String

        @Option(help: "Its hostname (letters, digits and '-', at most 63).")
        var hostname: String

        @Option(help: "Its fixed address (default: none, it gets one from the pool).")
        var ip: String?

        @Option(help: "Its group in nodes.yaml (default: the group of discover:, if any).")
        var group: String?

        @OptionGroup var server: ServerStateOptions

        func validate() throws {
            if MACAddress(mac) == nil { throw ValidationError("'\(mac)' is not a MAC address") }
            if !Inventory.isValidHostname(hostname) {
                throw ValidationError("invalid hostname '\(hostname)': letters, digits and '-', at most 63, not starting with '-'")
            }
            if let ip, IPv4Address(ip) == nil { throw ValidationError("'\(ip)' is not an IPv4 address") }
        }

        func run() throws {
            let mac = MACAddress(self.mac)!
            let address = ip.flatMap { IPv4Address($0) }
            do {
                let (nodes, state) = try server.resolved()
                let inventory = try InventoryLoader.load(path: nodes)
                let group = group ?? inventory.discover?.group
                let binding = NodeBinding(mac: mac, hostname: hostname, ip: address, group: group,
                                          boundAt: Int64(Date().timeIntervalSince1970), origin: .adopt)
                var replaced: NodeBinding?
                try NodeBindingJournal.update(path: NodeBindingJournal.path(inStateDirectory: state)) { contents in
                    let others = contents.bindings.filter { $0.mac != mac }
                    replaced = contents.bindings.first { $0.mac == mac }
                    try Self.check(binding, in: inventory, others: others)
                    return [binding]
                }
                let previous = replaced.map { " (replaces the binding as \($0.hostname)\($0.ip.map { " \($0)" } ?? ""))" } ?? ""
                print("adopted \(mac) as \(hostname)\(address.map { " \($0)" } ?? "")\(group.map { " in group \($0)" } ?? "")\(previous)")
                print("a running server takes it within its poll interval (or at SIGHUP); run 'imagebuild publish' for its per-node files")
            } catch {
                fail(error)
            }
        }

        /// The refusals, each naming the other holder and where it is.
        static func check(_ binding: NodeBinding, in inventory: Inventory, others: [NodeBinding]) throws {
            func refuse(_ message: String, hint: String? = nil) -> ConfigError {
                ConfigError(ConfigLocation(file: inventory.file, line: 0, column: 0), message, hint: hint)
            }
            if let node = inventory.node(mac: binding.mac) {
                throw ConfigError(node.location, "\(binding.mac) is already listed in nodes.yaml as \(node.hostname)",
                                  hint: "nodes.yaml wins over a binding: change the node there")
            }
            if let node = inventory.node(hostname: binding.hostname) {
                throw ConfigError(node.location, "hostname \(binding.hostname) is already \(node.mac)'s in nodes.yaml")
            }
            if let other = others.first(where: { $0.hostname.lowercased() == binding.hostname.lowercased() }) {
                throw ConfigError(other.location ?? refuse("").location, "hostname \(binding.hostname) is already bound to \(other.mac)")
            }
            if let ip = binding.ip {
                if let problem = inventory.fixedAddressProblem(ip) { throw refuse("cannot adopt with --ip \(ip): \(problem)") }
                if let node = inventory.node(ip: ip) {
                    throw ConfigError(node.location, "\(ip) is already \(node.hostname)'s fixed address in nodes.yaml")
                }
                if let other = others.first(where: { $0.ip == ip }) {
                    throw ConfigError(other.location ?? refuse("").location, "\(ip) is already bound to \(other.mac) (\(other.hostname))")
                }
            }
            if let group = binding.group, inventory.groups[group] == nil {
                let known = inventory.groups.keys.sorted()
                throw refuse("unknown group '\(group)'", hint: known.isEmpty ? "nodes.yaml defines no groups" : "groups: \(known.joined(separator: ", "))")
            }
        }
    }
}
