import Foundation
import Yams

/// A YAML node together with the file it came from, with typed accessors that
/// throw `ConfigError`s located at the node. Strict by design: a mapping is
/// opened with the keys it may hold, and anything else is an error with a hint.
public struct YAMLValue {
    public let node: Node
    public let file: String

    public init(node: Node, file: String) {
        self.node = node
        self.file = file
    }

    /// Parses a whole document. Syntax errors keep libyaml's position.
    public static func parse(_ text: String, file: String) throws -> YAMLValue {
        do {
            guard let node = try Yams.compose(yaml: text) else {
                throw ConfigError(ConfigLocation(file: file, line: 1, column: 1), "the file is empty")
            }
            return YAMLValue(node: node, file: file)
        } catch let error as YamlError {
            throw Self.convert(error, file: file)
        }
    }

    static func convert(_ error: YamlError, file: String) -> ConfigError {
        switch error {
        case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _),
             .composer(_, let problem, let mark, _):
            return ConfigError(ConfigLocation(file: file, line: mark.line, column: mark.column), "YAML syntax: \(problem)")
        case .duplicatedKeysInMapping(let duplicates, let context):
            return ConfigError(
                ConfigLocation(file: file, line: context.mark.line, column: context.mark.column),
                "duplicate key \(duplicates.map { "'\($0)'" }.joined(separator: ", "))")
        default:
            return ConfigError(ConfigLocation(file: file, line: 0, column: 0), "YAML: \(error)")
        }
    }

    public var location: ConfigLocation {
        let mark = node.mark
        return ConfigLocation(file: file, line: mark?.line ?? 0, column: mark?.column ?? 0)
    }

    public func error(_ message: String, hint: String? = nil) -> ConfigError {
        ConfigError(location, message, hint: hint)
    }

    var kindName: String {
        switch node {
        case .scalar: return "a scalar"
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .alias: return "an alias"
        }
    }

    public var isNull: Bool {
        if case .scalar(let scalar) = node { return scalar.tag.rawValue.hasSuffix(":null") || (scalar.style == .plain && ["", "~", "null", "Null", "NULL"].contains(scalar.string)) }
        return false
    }

    public func string() throws -> String {
        guard case .scalar(let scalar) = node else { throw error("expected a string, found \(kindName)") }
        return scalar.string
    }

    public func bool() throws -> Bool {
        guard case .scalar(let scalar) = node else { throw error("expected true or false, found \(kindName)") }
        switch scalar.string.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default: throw error("expected true or false, found '\(scalar.string)'")
        }
    }

    public func int(in range: ClosedRange<Int>? = nil) throws -> Int {
        guard case .scalar(let scalar) = node, let value = Int(scalar.string) else {
            throw error("expected a whole number, found \(node.scalar.map { "'\($0.string)'" } ?? kindName)")
        }
        if let range, !range.contains(value) {
            throw error("\(value) is out of range \(range.lowerBound)...\(range.upperBound)")
        }
        return value
    }

    /// Elements of a list; a single scalar is *not* promoted, so types stay explicit.
    public func list() throws -> [YAMLValue] {
        guard case .sequence(let sequence) = node else { throw error("expected a list, found \(kindName)") }
        return sequence.map { YAMLValue(node: $0, file: file) }
    }

    public func stringList() throws -> [String] {
        try list().map { try $0.string() }
    }

    /// Opens a mapping, rejecting keys not in `allowed` with a "did you mean" hint.
    public func map(allowed: [String]) throws -> YAMLMap {
        guard case .mapping(let mapping) = node else { throw error("expected a mapping, found \(kindName)") }
        var entries: [(key: String, keyValue: YAMLValue, value: YAMLValue)] = []
        for (keyNode, valueNode) in mapping {
            let key = YAMLValue(node: keyNode, file: file)
            let name = try key.string()
            if !allowed.contains(name) {
                let hint = closestMatch(to: name, in: allowed).map { "did you mean '\($0)'?" }
                    ?? "allowed here: \(allowed.joined(separator: ", "))"
                throw key.error("unknown key '\(name)'", hint: hint)
            }
            entries.append((name, key, YAMLValue(node: valueNode, file: file)))
        }
        return YAMLMap(value: self, entries: entries)
    }

    /// The pairs of a mapping whose keys are data (e.g. `symlinks: {/a: /b}`).
    public func pairs() throws -> [(key: YAMLValue, value: YAMLValue)] {
        guard case .mapping(let mapping) = node else { throw error("expected a mapping, found \(kindName)") }
        return mapping.map { (YAMLValue(node: $0.0, file: file), YAMLValue(node: $0.1, file: file)) }
    }
}

/// A mapping opened with `YAMLValue.map(allowed:)`.
public struct YAMLMap {
    public let value: YAMLValue
    let entries: [(key: String, keyValue: YAMLValue, value: YAMLValue)]

    public var keys: [String] { entries.map(\.key) }
    public subscript(_ key: String) -> YAMLValue? {
        guard let entry = entries.first(where: { $0.key == key }), !entry.value.isNull else { return nil }
        return entry.value
    }
    public func keyLocation(_ key: String) -> YAMLValue? { entries.first(where: { $0.key == key })?.keyValue }

    public func required(_ key: String) throws -> YAMLValue {
        guard let value = self[key] else { throw value.error("missing required key '\(key)'") }
        return value
    }
    public func string(_ key: String) throws -> String? { try self[key]?.string() }
    public func bool(_ key: String) throws -> Bool? { try self[key]?.bool() }
    public func int(_ key: String, in range: ClosedRange<Int>? = nil) throws -> Int? { try self[key]?.int(in: range) }
    public func stringList(_ key: String) throws -> [String] { try self[key]?.stringList() ?? [] }
}
