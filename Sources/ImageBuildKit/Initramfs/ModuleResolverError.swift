/// Why a set of kernel module names could not be turned into a load list.
/// Each case names the modules directory (or file and line), what was wrong,
/// why, and a hint.
public enum ModuleResolverError: Error, CustomStringConvertible, Sendable, Equatable {
    /// A metadata file could not be read (`reason`: failing call and errno text).
    case unreadable(path: String, reason: String)
    /// A line of modules.dep / modules.alias / modules.softdep that does not parse.
    case malformedLine(path: String, line: Int, text: String, reason: String)
    /// No module, built-in module or alias by that name.
    case unknownModule(name: String, directory: String, suggestions: [String])
    /// An alias that names several modules, where one was needed.
    case ambiguousAlias(name: String, directory: String, candidates: [String])
    /// Modules that depend on each other in a loop (first element repeated at the end).
    case dependencyCycle(chain: [String], directory: String)
    /// modules.dep lists a dependency that has no line of its own.
    case missingDependency(module: String, dependency: String, directory: String)
    /// modules.dep names a file that is not in the directory.
    case moduleFileMissing(path: String)

    public var description: String {
        switch self {
        case .unreadable(let path, let reason):
            return "\(path): cannot read module metadata: \(reason)"
                + " (hint: is this /lib/modules/<version> of an installed kernel? run depmod <version> if modules.dep is missing)"
        case .malformedLine(let path, let line, let text, let reason):
            return "\(path):\(line): cannot parse '\(text)': \(reason) (hint: regenerate it with depmod)"
        case .unknownModule(let name, let directory, let suggestions):
            let hint = suggestions.isEmpty
                ? "check the name with `modinfo -k <version> \(name)`"
                : "did you mean \(suggestions.map { "'\($0)'" }.joined(separator: ", "))?"
            return "\(directory): unknown module '\(name)': no module, built-in module or alias has that name"
                + " (hint: \(hint))"
        case .ambiguousAlias(let name, let directory, let candidates):
            return "\(directory): '\(name)' is an alias for several modules (\(candidates.joined(separator: ", ")))"
                + " (hint: name the module you want instead of the alias)"
        case .dependencyCycle(let chain, let directory):
            return "\(directory): modules depend on each other in a cycle: \(chain.joined(separator: " -> "))"
                + " (hint: modules.dep is inconsistent; regenerate it with depmod)"
        case .missingDependency(let module, let dependency, let directory):
            return "\(directory): \(module) depends on \(dependency), which has no entry of its own in modules.dep"
                + " (hint: modules.dep is incomplete; regenerate it with depmod)"
        case .moduleFileMissing(let path):
            return "\(path): listed in modules.dep but missing"
                + " (hint: the kernel's modules are partly installed; reinstall the linux-image package)"
        }
    }
}
