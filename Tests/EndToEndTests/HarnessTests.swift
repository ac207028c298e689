import Foundation
import Testing

@Suite("Test harness")
struct HarnessTests {
    /// NIO creates sockets without CLOEXEC; a child that inherited a live server's accepted socket kept
    /// that connection open after the server closed it, and another test's time-out check saw no close.
    @Test("children start with stdin, stdout and stderr only")
    func childrenInheritNoDescriptors() throws {
        let leaked = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)  // no SOCK_CLOEXEC, like NIO's
        #expect(leaked > 2)
        defer { close(leaked) }
        let result = try Harness.shell("ls /proc/$$/fd")
        let open = result.stdout.split(whereSeparator: \.isWhitespace).compactMap { Int($0) }.sorted()
        #expect(open == [0, 1, 2], "the child holds descriptors it did not ask for: \(open)")
    }
}
