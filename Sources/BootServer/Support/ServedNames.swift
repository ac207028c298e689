/// Names in the boot root that TFTP and HTTP never serve, whatever their permissions: hidden names
/// (any path component starting with `.`: `.publish/` with its lock, history and generations, a
/// publish's staging folders) and `publish.json` (the whole inventory: every MAC, hostname and address).
/// The server reads those files itself; nodes never need them. One rule for both protocols.
enum ServedNames {
    /// True when `relative` (a path below the root, without a leading `/`) must not be served.
    /// One pass over the bytes, no allocation: this runs for every request.
    static func isWithheld(_ relative: some StringProtocol) -> Bool {
        var atComponentStart = true
        var leadingDot = false
        for byte in relative.utf8 {
            if byte == UInt8(ascii: "/") {
                atComponentStart = true
                leadingDot = false  // the component was "." alone: the same folder, not a hidden name
            } else if atComponentStart {
                atComponentStart = false
                leadingDot = byte == UInt8(ascii: ".")
            } else if leadingDot {
                return true  // ".x" (or "..")
            }
        }
        return relative == "publish.json"
    }
}
