import Foundation

/// Which nodes a command acts on, as an administrator writes them on a command line:
/// `node007`, `node[001-064]`, `rack[1-2]-n[01-16]`, `node[1-4,9]`, a group name, `group:NAME`, a MAC
/// address, `all`; several separated by commas or given as separate arguments. The result is in
/// nodes.yaml order, each node once.
///
/// A bracket range keeps the width of its first number (`[001-064]` gives `node001`...), as Slurm and
/// pdsh write host lists. A name that is both a node and a group is refused (write `group:NAME`); a
/// name that is neither is an error with the closest name as a hint, so a typo never shrinks a
/// reboot to the nodes that happened to match.
public enum NodeSelection {
    public struct SelectionError: Error, CustomStringConvertible, Equatable {
        public var description: String
    }

    /// More names than this from one bracket expression is a typo (`n[0-99999999]`).
    static let expansionLimit = 100_000

    public static func select(_ arguments: [String], in inventory: Inventory) throws -> [Inventory.Node] {
        let items = try arguments.flatMap(splitTopLevel)
        guard !items.isEmpty else { throw SelectionError(description: "no nodes named (hostnames, node[01-10], a group, or all)") }
        var byName: [String: Int] = [:]
        for (index, node) in inventory.nodes.enumerated() { byName[node.hostname.lowercased()] = index }
        var chosen = Set<Int>()
        var problems: [String] = []
        let names = inventory.nodes.map(\.hostname)
        func unknown(_ name: String) -> String {
            let hint = closestMatch(to: name, in: names + inventory.groups.keys.sorted()).map { " (did you mean '\($0)'?)" } ?? ""
            return "'\(name)' is neither a node nor a group of \(inventory.file)\(hint)"
        }
        for item in items {
            if item == "all" {
                chosen.formUnion(inventory.nodes.indices)
                continue
            }
            if item.hasPrefix("group:") {
                let group = String(item.dropFirst(6))
                guard inventory.groups[group] != nil else { problems.append(unknown(group)); continue }
                chosen.formUnion(inventory.nodes.indices.filter { inventory.nodes[$0].group == group })
                continue
            }
            if item.contains("[") || item.contains("]") {
                let expanded: [String]
                do { expanded = try expand(item) } catch let error as SelectionError {
                    problems.append(error.description)
                    continue
                }
                var missing: [String] = []
                for name in expanded {
                    if let index = byName[name.lowercased()] { chosen.insert(index) } else { missing.append(name) }
                }
                if !missing.isEmpty {
                    let shown = missing.prefix(5).joined(separator: ", ") + (missing.count > 5 ? " and \(missing.count - 5) more" : "")
                    problems.append("\(item): \(missing.count) of its \(expanded.count) names are not in \(inventory.file): \(shown)")
                }
                continue
            }
            let node = byName[item.lowercased()]
            let isGroup = inventory.groups[item] != nil
            // A MAC only when no hostname or group reads the same (`aabbccddeeff` is a valid hostname).
            if node == nil, !isGroup, let mac = MACAddress(item) {
                guard let found = inventory.node(mac: mac), let index = byName[found.hostname.lowercased()] else {
                    problems.append("no node of \(inventory.file) has MAC \(mac)")
                    continue
                }
                chosen.insert(index)
                continue
            }
            switch (node, isGroup) {
            case (let index?, false): chosen.insert(index)
            case (nil, true): chosen.formUnion(inventory.nodes.indices.filter { inventory.nodes[$0].group == item })
            case (_?, true): problems.append("'\(item)' is both a node and a group: write group:\(item) for the group")
            case (nil, false): problems.append(unknown(item))
            }
        }
        if !problems.isEmpty { throw SelectionError(description: problems.joined(separator: "\n")) }
        return chosen.sorted().map { inventory.nodes[$0] }
    }

    /// Splits `a,b[1-3,5],c` at commas outside brackets.
    static func splitTopLevel(_ argument: String) throws -> [String] {
        var items: [String] = [], current = "", depth = 0
        for character in argument {
            switch character {
            case "[": depth += 1
            case "]":
                depth -= 1
                guard depth >= 0 else { throw SelectionError(description: "'\(argument)': ']' without '['") }
            case "," where depth == 0:
                if !current.isEmpty { items.append(current) }
                current = ""
                continue
            default: break
            }
            current.append(character)
        }
        guard depth == 0 else { throw SelectionError(description: "'\(argument)': '[' without ']'") }
        if !current.isEmpty { items.append(current) }
        return items.map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    /// `rack[1-2]-n[01-03,07]` -> rack1-n01, rack1-n02, ..., rack2-n07.
    static func expand(_ pattern: String) throws -> [String] {
        guard let open = pattern.firstIndex(of: "[") else {
            guard !pattern.contains("]") else { throw SelectionError(description: "'\(pattern)': ']' without '['") }
            return [pattern]
        }
        guard let close = pattern[open...].firstIndex(of: "]") else {
            throw SelectionError(description: "'\(pattern)': '[' without ']'")
        }
        let prefix = String(pattern[..<open])
        let body = pattern[pattern.index(after: open)..<close]
        let rest = try expand(String(pattern[pattern.index(after: close)...]))
        var values: [String] = []
        for part in body.split(separator: ",", omittingEmptySubsequences: false) {
            let bounds = part.split(separator: "-", omittingEmptySubsequences: false)
            guard (1...2).contains(bounds.count), bounds.allSatisfy({ !$0.isEmpty && $0.allSatisfy(\.isASCII) && $0.allSatisfy(\.isNumber) }),
                  let low = Int(bounds[0]), let high = Int(bounds.last!) else {
                throw SelectionError(description: "'\(pattern)': '[\(body)]' is not a list of numbers and ranges like [001-064,070]")
            }
            guard low <= high else { throw SelectionError(description: "'\(pattern)': \(part) runs backwards") }
            guard high - low < expansionLimit, values.count + (high - low + 1) <= expansionLimit else {
                throw SelectionError(description: "'\(pattern)' names more than \(expansionLimit) nodes")
            }
            let width = bounds[0].count
            for value in low...high {
                let digits = String(value)
                values.append(String(repeating: "0", count: max(0, width - digits.count)) + digits)
            }
        }
        guard values.count * rest.count <= expansionLimit else {
            throw SelectionError(description: "'\(pattern)' names more than \(expansionLimit) nodes")
        }
        return values.flatMap { value in rest.map { prefix + value + $0 } }
    }
}
