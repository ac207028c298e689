import Foundation

/// A position in a configuration file, printed the way compilers do: `file:line:column`.
public struct ConfigLocation: Sendable, Equatable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var column: Int
    public init(file: String, line: Int, column: Int) {
        self.file = file
        self.line = line
        self.column = column
    }
    public var description: String { line > 0 ? "\(file):\(line):\(column)" : file }
}

/// An error in a recipe or inventory, located at the offending node so an
/// administrator can jump straight to it: `recipe.yaml:12:5: unknown key 'pakages' (did you mean 'packages'?)`.
public struct ConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    public var location: ConfigLocation
    public var message: String
    public var hint: String?

    public init(_ location: ConfigLocation, _ message: String, hint: String? = nil) {
        self.location = location
        self.message = message
        self.hint = hint
    }

    public var description: String {
        var text = "\(location): \(message)"
        if let hint { text += " (\(hint))" }
        return text
    }
}

/// Several located errors of one file, found in one pass (`nodes check` lists them all), one per line
/// in file order.
public struct ConfigErrors: Error, Sendable, Equatable, CustomStringConvertible {
    public var errors: [ConfigError]

    /// Throws nothing for none, the error itself for one, all of them for more.
    public static func throwIfAny(_ errors: [ConfigError]) throws {
        if errors.count == 1 { throw errors[0] }
        if errors.count > 1 { throw ConfigErrors(errors: errors) }
    }

    public var description: String { errors.map(\.description).joined(separator: "\n") }
}

/// Closest candidate by edit distance, for "did you mean" hints. Only suggests
/// names that are plausibly typos (distance at most a third of the length, min 2).
public func closestMatch(to word: String, in candidates: [String]) -> String? {
    var best: (String, Int)?
    for candidate in candidates {
        let distance = editDistance(word.lowercased(), candidate.lowercased())
        if best == nil || distance < best!.1 { best = (candidate, distance) }
    }
    guard let (name, distance) = best else { return nil }
    return distance <= max(2, word.count / 3) ? name : nil
}

/// Levenshtein distance over Unicode scalars.
public func editDistance(_ a: String, _ b: String) -> Int {
    editDistance(Array(a.unicodeScalars), Array(b.unicodeScalars))!
}

/// Levenshtein distance, O(n*m) time and O(m) memory, with an early exit: nil as soon as every cell
/// of a row passes `limit` (the module resolver scores ~4000 names per unknown name).
public func editDistance<Element: Equatable>(_ a: [Element], _ b: [Element], limit: Int = .max) -> Int? {
    if abs(a.count - b.count) > limit { return nil }
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var previous = Array(0...b.count)
    var current = [Int](repeating: 0, count: b.count + 1)
    for i in 1...a.count {
        current[0] = i
        var best = current[0]
        for j in 1...b.count {
            let cost = a[i - 1] == b[j - 1] ? 0 : 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            best = min(best, current[j])
        }
        if best > limit { return nil }
        swap(&previous, &current)
    }
    return previous[b.count] <= limit ? previous[b.count] : nil
}
