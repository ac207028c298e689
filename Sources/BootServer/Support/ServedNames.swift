/// Names in the boot root that TFTP and HTTP never serve, whatever their permissions: hidden names
/// (any path component starting with `.`: `.publish/` with its lock, history and generations, a
/// publish's staging folders) and `publish.json` (the whole inventory: every MAC, hostname and address).
/// The server reads those files itself; nodes never need them. One rule for both protocols, applied by
/// `BootRootReader` to every name before it touches the file system.
enum ServedNames {
    enum Verdict: Equatable {
        /// A name the reader may look up.
        case servable
        /// Hidden or `publish.json`: answered as a file that is not there.
        case withheld
        /// A `..` component or a NUL byte (which would end the C string early): refused outright.
        case escapes
        /// No component but `.` and empty ones: the root itself, a directory.
        case root
    }

    /// What `relative` (a path below the root, `/`-separated; empty and `.` components are ignored) is.
    /// One pass over the bytes, no allocation: this runs for every request. An escape anywhere wins
    /// over a withheld component (`.publish/../x` is refused as leaving the root).
    static func classify(_ relative: some StringProtocol) -> Verdict {
        let publishJSON: StaticString = "publish.json"
        var length = 0  // bytes of the current component so far
        var leadingDot = false, dotsOnly = true
        var matched = 0, matching = true  // prefix of "publish.json" the component matches
        var named = 0, onlyNamedIsPublishJSON = false, withheld = false
        func endComponent() -> Bool {  // false: the component is ".."
            defer { length = 0; leadingDot = false; dotsOnly = true; matched = 0; matching = true }
            if length == 0 || (length == 1 && leadingDot) { return true }  // "a//b", "a/./b"
            if length == 2 && dotsOnly { return false }
            if leadingDot {
                withheld = true
            } else {
                named += 1
                onlyNamedIsPublishJSON = matching && matched == publishJSON.utf8CodeUnitCount
            }
            return true
        }
        for byte in relative.utf8 {
            if byte == 0 { return .escapes }
            if byte == UInt8(ascii: "/") {
                guard endComponent() else { return .escapes }
                continue
            }
            if length == 0 { leadingDot = byte == UInt8(ascii: ".") }
            if byte != UInt8(ascii: ".") { dotsOnly = false }
            if matching {
                if matched < publishJSON.utf8CodeUnitCount && publishJSON.utf8Start[matched] == byte {
                    matched += 1
                } else {
                    matching = false
                }
            }
            length += 1
        }
        guard endComponent() else { return .escapes }
        if withheld || (named == 1 && onlyNamedIsPublishJSON) { return .withheld }
        return named == 0 ? .root : .servable
    }

    /// True when `relative` must not be served for its name alone (withheld, or leaving the root).
    static func isWithheld(_ relative: some StringProtocol) -> Bool {
        switch classify(relative) {
        case .withheld, .escapes: true
        case .servable, .root: false
        }
    }
}
