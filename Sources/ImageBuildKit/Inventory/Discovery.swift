import Foundation
#if canImport(Glibc)
import Glibc
#endif

// Discovery: machines nodes.yaml does not list are bound to a hostname and an address through a
// journal in the server's state directory (`discovery/bindings`), never by rewriting nodes.yaml.
// `publish`, `serve` and `nodes explain` merge the bindings into the inventory they read
// (`Inventory.merging`): nodes.yaml wins every conflict, and the merge says so.

extension Inventory {
    /// nodes.yaml's optional `discover:` block: where the server binds machines it does not know.
    ///
    ///     discover:
    ///       group: compute              # optional; must be a group of nodes.yaml
    ///       hostname: "node{n:03}"      # {n}, or {n:0W} for W digits with leading zeros
    ///       addresses: 10.77.0.50-10.77.0.99
    ///       first: 1                    # n of the first slot (default 1)
    ///
    /// Slot `i` (from 0) is hostname `pattern(first + i)` with address `addresses.lower + i`; a
    /// machine gets the first slot whose hostname and address nothing else holds.
    public struct Discover: Sendable, Equatable {
        public var group: String?
        public var hostname: HostnamePattern
        public var addresses: ClosedRange<IPv4Address>
        public var first: Int
        public var location: ConfigLocation

        public init(group: String?, hostname: HostnamePattern, addresses: ClosedRange<IPv4Address>, first: Int = 1,
                    location: ConfigLocation) {
            self.group = group
            self.hostname = hostname
            self.addresses = addresses
            self.first = first
            self.location = location
        }

        public var slotCount: Int { addresses.lowerBound.distance(to: addresses.upperBound) + 1 }

        /// Slot `index` (from 0).
        public func slot(_ index: Int) -> (hostname: String, ip: IPv4Address) {
            (hostname.render(first + index), addresses.lowerBound.advanced(by: index))
        }
    }

    /// A hostname with one number in it: `node{n:03}` is node001, node002, ...
    public struct HostnamePattern: Sendable, Equatable, CustomStringConvertible {
        public var prefix: String
        public var suffix: String
        /// Digits, padded with zeros (0: as many as the number has).
        public var width: Int

        /// nil with the reason when `text` is not a pattern.
        public static func parse(_ text: String) -> Result<HostnamePattern, PatternError> {
            guard let open = text.firstIndex(of: "{") else { return .failure(PatternError("no '{n}' placeholder")) }
            guard let close = text[open...].firstIndex(of: "}") else { return .failure(PatternError("'{' is not closed")) }
            let rest = text[text.index(after: close)...]
            if rest.contains("{") || rest.contains("}") || text[..<open].contains("}") {
                return .failure(PatternError("more than one placeholder, or a stray brace"))
            }
            let inner = text[text.index(after: open)..<close]
            var width = 0
            if inner != "n" {
                guard inner.hasPrefix("n:0"), let digits = Int(inner.dropFirst(3)), (1...9).contains(digits) else {
                    return .failure(PatternError("'{\(inner)}' is not {n} or {n:0W} (W from 1 to 9, e.g. {n:03})"))
                }
                width = digits
            }
            let pattern = HostnamePattern(prefix: String(text[..<open]), suffix: String(rest), width: width)
            let sample = pattern.render(1)
            guard Inventory.isValidHostname(sample) else {
                return .failure(PatternError("it makes '\(sample)', not a hostname (letters, digits and '-', at most 63, not starting with '-')"))
            }
            return .success(pattern)
        }

        public struct PatternError: Error, Sendable, Equatable, CustomStringConvertible {
            public var description: String
            init(_ description: String) { self.description = description }
        }

        public func render(_ n: Int) -> String {
            let digits = String(n)
            return prefix + String(repeating: "0", count: max(0, width - digits.count)) + digits + suffix
        }

        public var description: String { prefix + (width == 0 ? "{n}" : "{n:0\(width)}") + suffix }
    }

    /// The rule nodes.yaml's hostnames follow, shared by bindings: letters, digits and '-', at most 63.
    public static func isValidHostname(_ name: String) -> Bool {
        !name.isEmpty && name.count <= 63 && name.first != "-"
            && name.unicodeScalars.allSatisfy { $0.isASCII && (CharacterSet.alphanumerics.contains($0) || $0 == "-") }
    }

    /// Why an address cannot be a node's fixed address in this network; nil when it can.
    public func fixedAddressProblem(_ ip: IPv4Address) -> String? {
        if !network.subnet.contains(ip) { return "\(ip) is outside the subnet \(network.subnet)" }
        if ip == network.subnet.address || ip == network.subnet.broadcast { return "\(ip) is the network or broadcast address" }
        if ip == network.server { return "\(ip) is the server's own address" }
        if let pool = network.pool, pool.contains(ip) {
            return "\(ip) is inside the dynamic pool \(pool.lowerBound)-\(pool.upperBound)"
        }
        return nil
    }

    /// The node whose hostname is `name` (case-insensitive), by a scan (bindings are rare).
    public func node(hostname name: String) -> Node? {
        let lower = name.lowercased()
        return nodes.first { $0.hostname.lowercased() == lower }
    }

    /// What merging bindings decided that an administrator should read (logged by `serve`, printed by
    /// `publish` and `nodes discovered`).
    public struct MergeNote: Sendable, Equatable, CustomStringConvertible {
        public var location: ConfigLocation
        public var message: String
        public var description: String { "\(location): \(message)" }
    }

    /// This inventory (nodes.yaml) with `bindings` added as nodes, as if listed at the end of nodes.yaml
    /// (they inherit their group and the defaults). nodes.yaml wins: a binding whose MAC, hostname or
    /// address nodes.yaml (or an earlier binding) already holds is left out, with a note saying which.
    public func merging(_ bindings: [NodeBinding]) -> (inventory: Inventory, notes: [MergeNote]) {
        guard !bindings.isEmpty else { return (self, []) }
        var merged = self
        var notes: [MergeNote] = []
        var names: [String: Node] = [:]
        for node in nodes { names[node.hostname.lowercased()] = names[node.hostname.lowercased()] ?? node }
        var added: [Node] = []
        var macs = Set<MACAddress>(), ips = Set<IPv4Address>()
        for binding in bindings {
            let location = binding.location ?? ConfigLocation(file: "bindings", line: 0, column: 0)
            func skip(_ why: String) {
                notes.append(MergeNote(location: location, message: "binding of \(binding.mac) as \(binding.hostname) ignored: \(why)"))
            }
            if let listed = node(mac: binding.mac) {
                skip("nodes.yaml lists this MAC as \(listed.hostname) (\(listed.location)); nodes.yaml wins")
                continue
            }
            if let listed = names[binding.hostname.lowercased()] {
                let owner = listed.location.file == file ? "nodes.yaml lists" : "an earlier binding has"
                skip("\(owner) hostname \(binding.hostname) for \(listed.mac) (\(listed.location))\(owner.hasPrefix("nodes") ? "; nodes.yaml wins" : "")")
                continue
            }
            if let ip = binding.ip {
                if let listed = node(ip: ip) {
                    skip("nodes.yaml gives \(ip) to \(listed.hostname) (\(listed.location)); nodes.yaml wins")
                    continue
                }
                if ips.contains(ip) { skip("an earlier binding has \(ip)"); continue }
                if let problem = fixedAddressProblem(ip) { skip(problem); continue }
            }
            if macs.contains(binding.mac) { skip("an earlier binding has this MAC"); continue }
            var group = binding.group
            if let name = group, groups[name] == nil {
                notes.append(MergeNote(location: location, message: "binding of \(binding.mac) names group '\(name)', which nodes.yaml no longer has: bound without a group"))
                group = nil
            }
            let node = Node(mac: binding.mac, hostname: binding.hostname, ip: binding.ip, group: group, settings: Settings(), location: location)
            names[binding.hostname.lowercased()] = node
            macs.insert(binding.mac)
            if let ip = binding.ip { ips.insert(ip) }
            added.append(node)
        }
        merged.nodes += added
        return (merged, notes)
    }

    /// The first free slot of `discover:` (nil: no block, or every slot is taken). A slot is taken
    /// when a node (listed or bound) has its hostname or its address, or its address cannot be fixed.
    public func nextDiscoverySlot(excluding pending: [NodeBinding] = []) -> (hostname: String, ip: IPv4Address)? {
        var names = Set(nodes.map { $0.hostname.lowercased() })
        var ips = Set(nodes.compactMap(\.ip))
        for binding in pending {
            names.insert(binding.hostname.lowercased())
            if let ip = binding.ip { ips.insert(ip) }
        }
        return nextDiscoverySlot(from: 0, takenNames: names, takenAddresses: ips).map { ($0.hostname, $0.ip) }
    }

    /// The first free slot from `cursor` on, given the lowercased hostnames and the addresses taken
    /// (the server keeps these sets between calls: a storm of new machines does not rebuild them
    /// per machine).
    public func nextDiscoverySlot(from cursor: Int, takenNames: Set<String>, takenAddresses: Set<IPv4Address>)
        -> (index: Int, hostname: String, ip: IPv4Address)? {
        guard let discover, cursor < discover.slotCount else { return nil }
        for index in max(0, cursor)..<discover.slotCount {
            let slot = discover.slot(index)
            if takenNames.contains(slot.hostname.lowercased()) || takenAddresses.contains(slot.ip) || fixedAddressProblem(slot.ip) != nil { continue }
            return (index, slot.hostname, slot.ip)
        }
        return nil
    }

    /// The slots `discover:` leaves to machines, for the decision log when none is left.
    public var discoverySummary: String? {
        discover.map { "discover: \($0.hostname) in \($0.addresses.lowerBound)-\($0.addresses.upperBound) (\($0.slotCount) slots, \($0.location))" }
    }
}

extension InventoryLoader {
    /// The `discover:` block, checked against the network, the pool and the groups.
    static func parseDiscover(_ value: YAMLValue, network: Inventory.Network, groups: [String: Inventory.Settings]) throws -> Inventory.Discover {
        let map = try value.map(allowed: ["group", "hostname", "addresses", "first"])
        var group: String?
        if let groupValue = map["group"] {
            let name = try groupValue.string()
            guard groups[name] != nil else {
                let hint = closestMatch(to: name, in: Array(groups.keys)).map { "did you mean '\($0)'?" }
                    ?? (groups.isEmpty ? "no groups are defined" : "groups: \(groups.keys.sorted().joined(separator: ", "))")
                throw groupValue.error("unknown group '\(name)'", hint: hint)
            }
            group = name
        }
        let patternValue = try map.required("hostname")
        let patternText = try patternValue.string()
        let pattern: Inventory.HostnamePattern
        switch Inventory.HostnamePattern.parse(patternText) {
        case .success(let parsed): pattern = parsed
        case .failure(let error):
            throw patternValue.error("malformed hostname pattern '\(patternText)': \(error)", hint: "e.g. node{n:03} for node001, node002, ...")
        }
        let rangeValue = try map.required("addresses")
        let rangeText = try rangeValue.string()
        let parts = rangeText.split(separator: "-").map { IPv4Address(String($0).trimmingCharacters(in: .whitespaces)) }
        guard parts.count == 2, let low = parts[0], let high = parts[1], low <= high else {
            throw rangeValue.error("'\(rangeText)' is not a range like 10.77.0.50-10.77.0.99")
        }
        guard network.subnet.contains(low), network.subnet.contains(high) else {
            throw rangeValue.error("the discovery range \(low)-\(high) is outside the subnet \(network.subnet)")
        }
        if (low...high).contains(network.server) {
            throw rangeValue.error("the discovery range contains the server's own address \(network.server)")
        }
        if (low...high).contains(network.subnet.address) || (low...high).contains(network.subnet.broadcast) {
            throw rangeValue.error("the discovery range contains the network or broadcast address of \(network.subnet)")
        }
        if let pool = network.pool, pool.overlaps(low...high) {
            throw rangeValue.error("the discovery range \(low)-\(high) overlaps the dynamic pool \(pool.lowerBound)-\(pool.upperBound)",
                                   hint: "bound machines get fixed addresses: keep the two ranges apart")
        }
        let first = try map.int("first", in: 0...999_999_999) ?? 1
        let last = pattern.render(first + low.distance(to: high))
        guard Inventory.isValidHostname(last) else {
            throw patternValue.error("the last slot's hostname '\(last)' is too long", hint: "at most 63 characters")
        }
        return Inventory.Discover(group: group, hostname: pattern, addresses: low...high, first: first, location: value.location)
    }
}

/// A machine bound to a hostname (and usually a fixed address) outside nodes.yaml: by the server
/// (`discover:`) or by `imagebuild nodes adopt`.
public struct NodeBinding: Sendable, Equatable, Codable {
    public enum Origin: String, Sendable, Codable { case discover, adopt }
    public var mac: MACAddress
    public var hostname: String
    public var ip: IPv4Address?
    public var group: String?
    /// Unix seconds.
    public var boundAt: Int64
    public var origin: Origin
    /// Where the binding sits in the journal (`bindings:LINE`), for merge notes; not stored.
    public var location: ConfigLocation?

    public init(mac: MACAddress, hostname: String, ip: IPv4Address?, group: String?, boundAt: Int64, origin: Origin,
                location: ConfigLocation? = nil) {
        self.mac = mac
        self.hostname = hostname
        self.ip = ip
        self.group = group
        self.boundAt = boundAt
        self.origin = origin
        self.location = location
    }

    enum CodingKeys: String, CodingKey { case mac, hostname, ip, group, boundAt = "bound_at", origin }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let macText = try c.decode(String.self, forKey: .mac)
        guard let mac = MACAddress(macText) else {
            throw DecodingError.dataCorruptedError(forKey: .mac, in: c, debugDescription: "malformed MAC '\(macText)'")
        }
        self.mac = mac
        hostname = try c.decode(String.self, forKey: .hostname)
        guard Inventory.isValidHostname(hostname) else {
            throw DecodingError.dataCorruptedError(forKey: .hostname, in: c, debugDescription: "invalid hostname '\(hostname)'")
        }
        if let ipText = try c.decodeIfPresent(String.self, forKey: .ip) {
            guard let ip = IPv4Address(ipText) else {
                throw DecodingError.dataCorruptedError(forKey: .ip, in: c, debugDescription: "malformed IP address '\(ipText)'")
            }
            self.ip = ip
        }
        group = try c.decodeIfPresent(String.self, forKey: .group)
        boundAt = try c.decodeIfPresent(Int64.self, forKey: .boundAt) ?? 0
        origin = try c.decodeIfPresent(Origin.self, forKey: .origin) ?? .adopt
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(mac.description, forKey: .mac)
        try c.encode(hostname, forKey: .hostname)
        try c.encodeIfPresent(ip?.description, forKey: .ip)
        try c.encodeIfPresent(group, forKey: .group)
        try c.encode(boundAt, forKey: .boundAt)
        try c.encode(origin, forKey: .origin)
    }
}

/// `STATE_DIR/discovery/bindings`: an append-only journal, one JSON object per line, written like
/// the DHCP lease journal: a binding is appended and `fdatasync`ed before anyone acts on it, so a
/// crash loses no binding; a line cut short by a crash is recognised (no newline) and ignored. Writers
/// (the server, `nodes adopt`) hold an exclusive `flock` on the file while they check and append,
/// so two of them never give one slot twice. A later line for the same MAC replaces an earlier one.
public enum NodeBindingJournal {
    public static let header = "# imagebuild node bindings v1: one JSON object per line; nodes.yaml wins every conflict\n"

    public static func directory(inStateDirectory state: String) -> String { state + "/discovery" }
    public static func path(inStateDirectory state: String) -> String { directory(inStateDirectory: state) + "/bindings" }

    /// What a read found: the bindings in force (one per MAC, latest wins, in first-bound order) and
    /// lines that did not parse (located), which are skipped.
    public struct Contents: Sendable, Equatable {
        public var bindings: [NodeBinding] = []
        public var problems: [ConfigError] = []
        public var tornBytes = 0
    }

    /// Reads the journal; a missing file reads as empty.
    public static func read(path: String) throws -> Contents {
        var contents = Contents()
        guard FileManager.default.fileExists(atPath: path) else { return contents }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError(ConfigLocation(file: path, line: 0, column: 0), "cannot read the bindings: \(String(cString: strerror(errno)))")
        }
        var order: [MACAddress] = []
        var byMAC: [MACAddress: NodeBinding] = [:]
        let bytes = [UInt8](data)
        var start = 0, line = 0
        let decoder = JSONDecoder()
        while start < bytes.count {
            line += 1
            guard let newline = bytes[start...].firstIndex(of: 0x0A) else {
                contents.tornBytes = bytes.count - start
                break
            }
            let text = bytes[start..<newline]
            start = newline + 1
            if text.isEmpty || text.first == UInt8(ascii: "#") { continue }
            do {
                var binding = try decoder.decode(NodeBinding.self, from: Data(text))
                binding.location = ConfigLocation(file: path, line: line, column: 1)
                if byMAC[binding.mac] == nil { order.append(binding.mac) }
                byMAC[binding.mac] = binding
            } catch {
                contents.problems.append(ConfigError(ConfigLocation(file: path, line: line, column: 1), "unreadable binding skipped: \(Self.reason(error))"))
            }
        }
        contents.bindings = order.map { byMAC[$0]! }
        return contents
    }

    static func reason(_ error: any Error) -> String {
        if case DecodingError.dataCorrupted(let context) = error, !context.codingPath.isEmpty { return context.debugDescription }
        if case DecodingError.keyNotFound(let key, _) = error { return "no '\(key.stringValue)'" }
        return "not a JSON object of a binding"
    }

    /// What `update` appended, and the journal's `stat` taken under the lock right after.
    public struct Update: Sendable {
        public var appended: [NodeBinding]
        public var status: stat
    }

    /// Runs `body` with the journal locked (exclusive `flock`, created if needed), then appends what it
    /// returns and fsyncs before unlocking. `body` gets the bindings in force, read under the lock;
    /// when the file still has `knownSize` bytes (the size this writer left it at: nobody else wrote
    /// since), it is not read again and `body` gets empty contents.
    @discardableResult
    public static func update(path: String, knownSize: Int? = nil, _ body: (Contents) throws -> [NodeBinding]) throws -> Update {
        let directory = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
        guard fd >= 0 else { throw ioError("open", path) }
        defer { close(fd) }
        guard flock(fd, LOCK_EX) == 0 else { throw ioError("lock", path) }
        var size = stat()
        fstat(fd, &size)
        var contents = knownSize == Int(size.st_size) && size.st_size > 0 ? Contents() : try read(path: path)
        if contents.tornBytes > 0 {
            // A crash cut the last line short: cut it off so the next line starts clean.
            guard ftruncate(fd, off_t(Int(size.st_size) - contents.tornBytes)) == 0 else { throw ioError("truncate", path) }
            contents.tornBytes = 0
        }
        let new = try body(contents)
        guard !new.isEmpty || size.st_size == 0 else { return Update(appended: [], status: size) }
        var text = size.st_size == 0 ? header : ""
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        for binding in new { text += String(decoding: try encoder.encode(binding), as: UTF8.self) + "\n" }
        guard SafeFileSystem.writeAll(fd, text.utf8) == nil else { throw ioError("write", path) }
        guard fdatasync(fd) == 0 else { throw ioError("fdatasync", path) }
        if size.st_size == 0 { SafeFileSystem.fsyncDirectory(directory) }
        var after = stat()
        fstat(fd, &after)
        return Update(appended: new, status: after)
    }

    static func ioError(_ operation: String, _ path: String) -> ConfigError {
        ConfigError(ConfigLocation(file: path, line: 0, column: 0), "\(operation) failed: \(String(cString: strerror(errno)))")
    }
}
