/// Why the shared-library closure of a set of executables could not be
/// computed. Paths are inside the root unless said otherwise; each case says
/// what, where, why, and gives a hint.
public enum ELFDependencyError: Error, CustomStringConvertible, Sendable, Equatable {
    /// A file could not be opened or read (host path; `reason` is the call and errno text).
    case unreadable(path: String, reason: String)
    /// The executable asked for does not exist in the root.
    case notFound(path: String, root: String)
    /// Not an ELF file (`found`: its first bytes). Scripts land here.
    case notELF(path: String, found: [UInt8])
    /// The file ends before a structure the headers point to.
    case truncated(path: String, what: String, needed: Int, size: Int)
    /// Header values that contradict each other or the file.
    case malformed(path: String, reason: String)
    /// A valid ELF file using a feature this reader does not handle.
    case unsupported(path: String, reason: String)
    /// A DT_NEEDED library found in none of the search directories.
    case libraryNotFound(name: String, neededBy: String, searched: [String])
    /// More than 40 symbolic links while resolving a path (a loop, most likely).
    case symlinkLoop(path: String, root: String)

    public var description: String {
        switch self {
        case .unreadable(let path, let reason):
            return "\(path): cannot read: \(reason) (hint: check the path and permissions)"
        case .notFound(let path, let root):
            return "\(path): no such file in root \(root) (hint: install the package that provides it into the root)"
        case .notELF(let path, let found):
            let isScript = found.starts(with: Array("#!".utf8))
            let shown = found.prefix(4).map { String($0, radix: 16) }.joined(separator: " ")
            return "\(path): not an ELF file (starts with \(shown))"
                + (isScript
                    ? " (hint: it is a script; list its interpreter instead)"
                    : " (hint: only ELF executables and libraries have shared-library dependencies)")
        case .truncated(let path, let what, let needed, let size):
            return "\(path): truncated ELF file: the \(what) needs \(needed) bytes but the file has \(size)"
                + " (hint: the file is cut short or corrupt; reinstall its package)"
        case .malformed(let path, let reason):
            return "\(path): malformed ELF file: \(reason) (hint: the file is corrupt; reinstall its package)"
        case .unsupported(let path, let reason):
            return "\(path): unsupported ELF file: \(reason)"
                + " (hint: add the libraries it needs to the initramfs explicitly)"
        case .libraryNotFound(let name, let neededBy, let searched):
            return "\(neededBy): needs \(name), found in none of \(searched.joined(separator: ":"))"
                + " (hint: install the package that provides \(name) into the root, or add its directory to /etc/ld.so.conf.d)"
        case .symlinkLoop(let path, let root):
            return "\(path): too many levels of symbolic links inside root \(root)"
                + " (hint: a link points back at itself; fix the link in the root)"
        }
    }
}
