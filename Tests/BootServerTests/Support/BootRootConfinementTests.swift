import BootProtocols
@testable import BootServer
import Foundation
import Logging
import NIOCore
import Testing

/// One table of paths, asked over TFTP and over HTTP of the same root at once: each is served by both
/// or refused by both (`BootRootReader` decides for both). Asked several times, so HTTP's fast paths
/// (after the router has answered once) and both caches answer too; then files change under the
/// servers (a chmod, a publish) and both must follow.
@Suite("boot root: one rule for TFTP and HTTP", .serialized, .timeLimit(.minutes(3)))
struct BootRootConfinementTests {
    /// A row: the same request in each protocol's syntax.
    struct Case: CustomStringConvertible {
        var tftp: String
        var http: String
        /// The file whose bytes are served (relative to the root), or nil: refused.
        var served: String?
        var description: String { "TFTP '\(tftp.replacingOccurrences(of: "\0", with: "\\0"))' / HTTP '\(http)'" }
    }

    static func same(_ path: String, served: Bool) -> Case {
        Case(tftp: path, http: "/" + path, served: served ? path : nil)
    }

    static let table: [Case] = [
        // Served: plain files, symlinks that stay inside (relative and absolute), the publish links
        // into .publish/current, a large file (HTTP's sendfile path), HTTP's percent-encoding and query.
        same("boot/vmlinuz", served: true),
        same("inside", served: true),
        same("inside-absolute", served: true),
        same("pxelinux.cfg/default", served: true),
        same("ipxe/boot.ipxe", served: true),
        same("images/compute/\(HTTPTestRoot.digest)/image.tar.gz", served: true),
        same("images/compute/\(HTTPTestRoot.digest)/cmdline", served: true),  // small, but every download counted
        Case(tftp: "boot/vmlinuz", http: "/boot/%76mlinuz", served: "boot/vmlinuz"),
        Case(tftp: "/boot/vmlinuz", http: "/boot/vmlinuz?x=1", served: "boot/vmlinuz"),
        Case(tftp: "boot\\vmlinuz", http: "//boot/./vmlinuz", served: "boot/vmlinuz"),
        // Not world-readable, directly or through a symlink.
        same("private", served: false),
        same("boot/private-link", served: false),
        // Not regular files.
        same("boot", served: false),
        same("images", served: false),
        same("fifo", served: false),
        same("null", served: false),
        same("device", served: false),
        same("dangling", served: false),
        // Symlinks out of the root: relative, absolute, to a directory, through /proc's magic links.
        same("escape.txt", served: false),
        same("escape-absolute", served: false),
        same("escape-dir/secret.txt", served: false),
        same("passwd", served: false),
        same("magic", served: false),
        // '..' anywhere, raw or percent-encoded; absolute names.
        Case(tftp: "../secret.txt", http: "/%2e%2e/secret.txt", served: nil),
        Case(tftp: "boot/../../secret.txt", http: "/boot/%2e%2e/%2e%2e/secret.txt", served: nil),
        Case(tftp: "boot/../boot/vmlinuz", http: "/boot/%2E%2E/boot/vmlinuz", served: nil),
        Case(tftp: "..\\secret.txt", http: "/..%2fsecret.txt", served: nil),
        Case(tftp: "/etc/passwd", http: "//etc/passwd", served: nil),
        // NUL: HTTP's %00; in TFTP the NUL ends the file name (and what follows is not a mode).
        Case(tftp: "pxelinux.cfg\0/default", http: "/pxelinux.cfg%00/default", served: nil),
        Case(tftp: "boot/vmlinuz\0x", http: "/boot/vmlinuz%00x", served: nil),
        // Withheld names, however they are spelt.
        same("publish.json", served: false),
        Case(tftp: "./publish.json", http: "/./publish.json", served: nil),
        Case(tftp: "//publish.json", http: "//publish.json", served: nil),
        Case(tftp: "\\publish.json", http: "/%70ublish.json", served: nil),
        same(".publish/lock", served: false),
        same(".publish/gen-1/publish.json", served: false),
        same(".publish/current/pxelinux.cfg/default", served: false),
        Case(tftp: "ipxe/../publish.json", http: "/ipxe/%2e%2e/publish.json", served: nil),
    ]

    /// The root: `HTTPTestRoot`'s publish layout and traps outside, plus one of each kind of file.
    static func makeRoot() throws -> HTTPTestRoot {
        let fixture = try HTTPTestRoot()
        let fm = FileManager.default
        try fm.createDirectory(atPath: fixture.root + "/boot", withIntermediateDirectories: true)
        try fixture.write("boot/vmlinuz", "a kernel\n")
        try fixture.write("private", "not for nodes\n")
        chmod(fixture.root + "/private", 0o600)
        try fixture.link("../private", at: "boot/private-link")
        try fixture.link("boot/vmlinuz", at: "inside")
        try fixture.link(fixture.root + "/boot/vmlinuz", at: "inside-absolute")
        try fixture.link("boot/missing", at: "dangling")
        try fixture.link("/dev/zero", at: "device")
        try fixture.link(fixture.base + "/secret.txt", at: "escape-absolute")
        try fixture.link("/proc/self/root" + fixture.base + "/secret.txt", at: "magic")
        try fixture.write(".publish/lock", "")
        #expect(mkfifo(fixture.root + "/fifo", 0o644) == 0)
        #expect(mknod(fixture.root + "/null", S_IFCHR | 0o666, dev_t(0x103) /* makedev(1, 3): /dev/null */) == 0)
        try fixture.writeBinary("\(fixture.imageDir)/image.tar.gz", size: 300 * 1024)  // over HTTP's 256 KiB
        try fixture.write("\(fixture.imageDir)/cmdline", "console=ttyS0\n")
        return fixture
    }

    enum Answer: Equatable, CustomStringConvertible {
        case served
        case refused(String)
        case wrongBytes(String)

        var description: String {
            switch self {
            case .served: "served"
            case .refused(let why): "refused (\(why))"
            case .wrongBytes(let why): "served other bytes (\(why))"
            }
        }
    }

    static func tftp(_ path: String, server: SocketAddress, expected: [UInt8]?) async throws -> Answer {
        let client = try await RawTFTPClient()
        try await client.send(.readRequest(TFTPRequest(filename: path)), to: server)
        let received = try await client.receive()
        if case .data? = received?.packet {
            // Ends the transfer, as a PXE ROM ends its size probe (a client IP may hold only 8).
            try await client.send(.error(code: .notDefined, message: "enough"), to: received!.from)
        }
        await client.close()
        switch received?.packet {
        case .data(1, let payload)?:
            let bytes = Array(payload.readableBytesView)
            guard let expected else { return .wrongBytes("\(bytes.count) bytes of a file that must not be served") }
            return bytes == Array(expected.prefix(512)) ? .served : .wrongBytes("block 1 differs")
        case .error(let code, let message)?:
            return .refused("\(code): \(message)")
        case let other?:
            return .wrongBytes("\(other)")
        case nil:
            return .refused("no answer")
        }
    }

    static func http(_ path: String, port: Int, expected: [UInt8]?) async throws -> Answer {
        let response = try await RawHTTP.get(port: port, path)
        guard response.status == 200 else {
            #expect((400..<500).contains(response.status), "\(path): \(response.status)")
            return .refused("\(response.status)")
        }
        guard let expected else { return .wrongBytes("\(response.body.count) bytes of a file that must not be served") }
        return response.body == expected ? .served : .wrongBytes("\(response.body.count) bytes, not the file's \(expected.count)")
    }

    /// Runs TFTP and HTTP on `fixture`'s root (127.0.0.1, ephemeral ports).
    static func withBothServers(_ fixture: HTTPTestRoot, _ body: @Sendable (SocketAddress, Int) async throws -> Void) async throws {
        let logger = testLogger("boot-root-test")
        let tftp = TFTPServer(configuration: TFTPServerConfiguration(root: fixture.root, host: "127.0.0.1", port: 0), logger: logger)
        try await serving(tftp) { addresses in
            try await withHTTPService(root: fixture, inventory: InventoryBox(nil)) { port, _ in
                try await body(addresses[0], port)
            }
        }
    }

    static func bytes(_ fixture: HTTPTestRoot, _ relative: String?) -> [UInt8]? {
        relative.flatMap { FileManager.default.contents(atPath: fixture.root + "/" + $0).map(Array.init) }
    }

    /// Asks every row over both protocols; the answers must be the row's, and the same.
    static func check(_ fixture: HTTPTestRoot, _ cases: [Case], tftp address: SocketAddress, http port: Int, pass: String) async throws {
        for row in cases {
            let expected = bytes(fixture, row.served)
            let overTFTP = try await tftp(row.tftp, server: address, expected: expected)
            let overHTTP = try await http(row.http, port: port, expected: expected)
            let wanted: Bool = row.served != nil
            #expect((overTFTP == .served) == wanted, "\(pass): \(row): TFTP \(overTFTP)")
            #expect((overHTTP == .served) == wanted, "\(pass): \(row): HTTP \(overHTTP)")
            if case .wrongBytes = overTFTP { Issue.record("\(pass): \(row): TFTP \(overTFTP)") }
            if case .wrongBytes = overHTTP { Issue.record("\(pass): \(row): HTTP \(overHTTP)") }
        }
    }

    @Test("the same table gets the same answers over TFTP and HTTP, first and cached")
    func oneTableBothProtocols() async throws {
        let fixture = try Self.makeRoot()
        defer { fixture.cleanup() }
        try await Self.withBothServers(fixture) { address, port in
            // 1: the router and TFTP's first read; 2: HTTP records the heads, TFTP from its cache;
            // 3: HTTP's early fast path (small files from memory, the large one with sendfile).
            for pass in 1...3 {
                try await Self.check(fixture, Self.table, tftp: address, http: port, pass: "pass \(pass)")
            }
        }
    }

    @Test("a chmod, an edit and a publish are followed by both protocols, cached or not")
    func changesAreFollowed() async throws {
        let fixture = try Self.makeRoot()
        defer { fixture.cleanup() }
        let large = "\(fixture.imageDir)/image.tar.gz"
        let rows = [Self.same("boot/vmlinuz", served: true), Self.same(large, served: true),
                    Self.same("\(fixture.imageDir)/cmdline", served: true), Self.same("pxelinux.cfg/default", served: true)]
        try await Self.withBothServers(fixture) { address, port in
            for pass in 1...3 {
                try await Self.check(fixture, rows, tftp: address, http: port, pass: "warm-up \(pass)")
            }
            // Not world-readable any more: refused at once, from every cache and fast path.
            chmod(fixture.root + "/boot/vmlinuz", 0o600)
            chmod(fixture.root + "/" + large, 0o640)
            chmod(fixture.root + "/\(fixture.imageDir)/cmdline", 0o600)
            let refused = rows.prefix(3).map { Case(tftp: $0.tftp, http: $0.http, served: nil) }
            for pass in 1...2 {
                try await Self.check(fixture, refused, tftp: address, http: port, pass: "chmod \(pass)")
            }
            chmod(fixture.root + "/boot/vmlinuz", 0o644)
            chmod(fixture.root + "/" + large, 0o644)
            chmod(fixture.root + "/\(fixture.imageDir)/cmdline", 0o644)
            for pass in 1...3 {
                try await Self.check(fixture, rows, tftp: address, http: port, pass: "chmod back \(pass)")
            }
            // A publish: a new generation, `current` switched with one rename.
            try FileManager.default.createDirectory(atPath: fixture.root + "/.publish/gen-2/pxelinux.cfg", withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: fixture.root + "/.publish/gen-2/ipxe", withIntermediateDirectories: true)
            try fixture.write(".publish/gen-2/pxelinux.cfg/default", "DEFAULT generation-2\n")
            try fixture.link("gen-2", at: ".publish/current.new")
            #expect(rename(fixture.root + "/.publish/current.new", fixture.root + "/.publish/current") == 0)
            for pass in 1...3 {
                try await Self.check(fixture, rows, tftp: address, http: port, pass: "publish \(pass)")
            }
            let config = try await RawHTTP.get(port: port, "/pxelinux.cfg/default")
            #expect(config.text == "DEFAULT generation-2\n")
        }
    }
}
