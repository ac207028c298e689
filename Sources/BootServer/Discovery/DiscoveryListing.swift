import Foundation
import ImageBuildKit

/// What `imagebuild nodes discovered` prints and `GET /api/v1/discovered` answers: the machines DHCP
/// saw that nodes.yaml does not list, and the bindings with whether each is in force.
public struct DiscoveryListing: Sendable, Codable, Equatable {
    public struct Binding: Sendable, Codable, Equatable {
        public var mac: String
        public var hostname: String
        public var ip: String?
        public var group: String?
        public var origin: String
        public var boundAt: Int64
        /// Merged into the inventory; false with `note` saying why not (nodes.yaml wins).
        public var inForce: Bool
        public var note: String?

        enum CodingKeys: String, CodingKey {
            case mac, hostname, ip, group, origin, note
            case boundAt = "bound_at", inForce = "in_force"
        }
    }

    public var machines: [DiscoveredMachine]
    public var bindings: [Binding]

    /// Joins the sightings with the bindings and what merging them into `inventory` (nodes.yaml
    /// alone, nil when it cannot be read) decided.
    public init(machines: [DiscoveredMachine], bindings: [NodeBinding], inventory: Inventory?) {
        let notes = inventory.map { $0.merging(bindings).notes } ?? []
        var byMAC: [String: NodeBinding] = [:]
        for binding in bindings { byMAC[binding.mac.description] = binding }
        self.machines = machines.map { machine in
            var machine = machine
            machine.boundAs = byMAC[machine.mac]?.hostname ?? machine.boundAs
            return machine
        }.sorted { ($0.lastSeen, $0.mac) > ($1.lastSeen, $1.mac) }
        self.bindings = bindings.map { binding in
            let note = notes.first { $0.location == binding.location && $0.message.contains(binding.mac.description) }
            let ignored = note?.message.contains(" ignored: ") == true
            return Binding(mac: binding.mac.description, hostname: binding.hostname, ip: binding.ip?.description, group: binding.group,
                           origin: binding.origin.rawValue, boundAt: binding.boundAt, inForce: !ignored, note: note?.message)
        }
    }

    /// Reads what the server wrote in `stateDirectory` (it need not be running).
    public static func read(stateDirectory: String, inventory: Inventory?) throws -> (listing: DiscoveryListing, problems: [ConfigError]) {
        let directory = NodeBindingJournal.directory(inStateDirectory: stateDirectory)
        let machines = try DiscoveryStore.readMachines(path: DiscoveryStore.machinesPath(in: directory))
        let contents = try NodeBindingJournal.read(path: NodeBindingJournal.path(inStateDirectory: stateDirectory))
        return (DiscoveryListing(machines: machines, bindings: contents.bindings, inventory: inventory), contents.problems)
    }
}
