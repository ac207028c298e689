@testable import BootServer
import Crypto
import Foundation
import ImageBuildKit
import Synchronization
import Testing
import TestSupport

/// Stage 1's image loader (`imagebuild-fetch`, the very bytes every initramfs carries) against the
/// boot server's real HTTP service: whole downloads, connections cut part-way (a proxy in between
/// passes a set number of bytes, then closes both ends), a server restarted mid-download, a file
/// replaced mid-download and a corrupted byte.
@Suite("Stage 1's image loader against the boot server", .serialized)
struct StageOneLoaderTests {
    static let size = 4 << 20
    static let file = "images/compute/\(HTTPTestRoot.digest)/image.tar.gz"

    /// The loader written out once per test, and a place for its output.
    struct Loader {
        let folder = NSTemporaryDirectory() + "loader-" + UUID().uuidString
        var path: String { folder + "/imagebuild-fetch" }
        var output: String { folder + "/out" }
        init() throws {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            try StageOneLoader.install(at: path)
        }
        func run(_ url: String, sha256: String? = nil, retries: Int = 8, options: [String] = []) async throws -> ProcessResult {
            var arguments = ["-r", String(retries), "-t", "5", "-o", output] + options
            if let sha256 { arguments += ["-s", sha256] }
            return try await ProcessRunner.run(path, arguments + [url], timeout: 120)
        }
        var written: Data { (try? Data(contentsOf: URL(fileURLWithPath: output))) ?? Data() }
        func cleanup() { try? FileManager.default.removeItem(atPath: folder) }
    }

    static func hex(_ bytes: some Sequence<UInt8>) -> String { SHA256.hash(data: Data(bytes)).map { String(format: "%02x", $0) }.joined() }

    @Test("a whole download: the bytes and the digest the server has, exit 0")
    func whole() async throws {
        let root = try HTTPTestRoot()
        let loader = try Loader()
        defer { root.cleanup(); loader.cleanup() }
        let bytes = try root.writeBinary(Self.file, size: Self.size)
        try await withHTTPService(root: root, inventory: InventoryBox(try httpTestInventory())) { port, _ in
            let result = try await loader.run("http://127.0.0.1:\(port)/\(Self.file)", sha256: Self.hex(bytes))
            #expect(result.status == 0, "\(result.stderr)")
            #expect(loader.written == Data(bytes))
            #expect(result.stderr.contains("\(Self.size) bytes") && result.stderr.contains("0 resumed") && result.stderr.contains("OK"))
        }
    }

    @Test("several URLs: each into its own file with its own digest, over one kept-alive connection; the first failure ends the run")
    func severalURLsOverOneConnection() async throws {
        let root = try HTTPTestRoot()
        let loader = try Loader()
        defer { root.cleanup(); loader.cleanup() }
        // Small files (answered on the event loop) around an image (its first request is the router's).
        let files = ["ipxe/a.tar.gz", "\(root.imageDir)/b.bin", "ipxe/c.tar.gz"]
        let contents = try files.enumerated().map { index, file in try root.writeBinary(file, size: 1000 + index * 70_000, seed: UInt64(index + 1)) }
        try await withHTTPService(root: root, inventory: InventoryBox(try httpTestInventory())) { port, _ in
            var arguments = ["-r", "2", "-t", "5"]
            for (index, file) in files.enumerated() {
                arguments += ["-o", loader.folder + "/out-\(index)"] + (index == 1 ? ["-s", Self.hex(contents[index])] : [])
                arguments.append("http://127.0.0.1:\(port)/\(file)")
            }
            let result = try await ProcessRunner.run(loader.path, arguments, timeout: 60)
            #expect(result.status == 0, "\(result.stderr)")
            for index in files.indices {
                #expect((try? Data(contentsOf: URL(fileURLWithPath: loader.folder + "/out-\(index)"))) == Data(contents[index]))
            }
            let lines = result.stderr.split(separator: "\n")
            #expect(lines.count == 3 && !lines[0].contains("previous URL's connection")
                    && lines.dropFirst().allSatisfy { $0.contains("over the previous URL's connection") }, "\(result.stderr)")
            #expect(lines.count == 3 && lines[1].contains(" OK,"), "\(result.stderr)")

            // A missing second file: exit 3 naming it; the third is not asked for.
            let failed = try await ProcessRunner.run(loader.path, ["-r", "2", "-t", "5", "-o", loader.folder + "/x0", "http://127.0.0.1:\(port)/\(files[0])",
                                                                   "-o", loader.folder + "/x1", "http://127.0.0.1:\(port)/ipxe/missing.tar.gz",
                                                                   "-o", loader.folder + "/x2", "http://127.0.0.1:\(port)/\(files[2])"], timeout: 60)
            #expect(failed.status == 3 && Self.lastLine(failed).hasPrefix("imagebuild-fetch: HTTP 404"), "\(failed.stderr)")
            #expect(!FileManager.default.fileExists(atPath: loader.folder + "/x2"))

            // The last URL may go to standard output (stage 1: the node's files, then the image into the unpacker).
            let piped = try await ProcessRunner.run("/bin/sh", ["-c", #""$0" "$@" > "$OUT""#, loader.path, "-o", loader.folder + "/p0",
                                                                "http://127.0.0.1:\(port)/\(files[0])", "-s", Self.hex(contents[1]),
                                                                "http://127.0.0.1:\(port)/\(files[1])"],
                                                    environment: ["OUT": loader.folder + "/p1"], timeout: 60)
            #expect(piped.status == 0, "\(piped.stderr)")
            #expect((try? Data(contentsOf: URL(fileURLWithPath: loader.folder + "/p0"))) == Data(contents[0]))
            #expect((try? Data(contentsOf: URL(fileURLWithPath: loader.folder + "/p1"))) == Data(contents[1]))
        }
        // Usage: each of several URLs but the last needs its own -o; -P, -H, -r and -t go before the first URL.
        let noOutput = try await ProcessRunner.run(loader.path, ["http://127.0.0.1:9/a", "-o", loader.folder + "/y", "http://127.0.0.1:9/b"], timeout: 10)
        #expect(noOutput.status == 2 && noOutput.stderr.contains("each but the last needs its own -o"), "\(noOutput.stderr)")
        let late = try await ProcessRunner.run(loader.path, ["-o", loader.folder + "/y", "http://127.0.0.1:9/a", "-P", "-o", loader.folder + "/z", "http://127.0.0.1:9/b"], timeout: 10)
        #expect(late.status == 2 && late.stderr.contains("before the first URL"), "\(late.stderr)")
    }

    @Test("several URLs are asked for in one write (pipelining) and answered in one; a server that closes after an answer gets the rest asked for again, one at a time")
    func pipelining() async throws {
        let loader = try Loader()
        defer { loader.cleanup() }
        // b is larger than the loader's head buffer: a's answer, b's head and part of b's body come in one read.
        let bodies = ["/a": (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 31) }, "/b": (0..<70_000).map { UInt8(truncatingIfNeeded: $0 &* 7) },
                      "/c": Array("the last one\n".utf8)]
        for mode in [PipelineProbe.Mode.keepAlive, .firstThenClose] {
            let probe = try PipelineProbe(bodies: bodies, mode: mode)
            defer { probe.stop() }
            var arguments = ["-r", "2", "-t", "5"]
            for name in ["a", "b", "c"] { arguments += ["-o", loader.folder + "/\(name)", "-s", Self.hex(bodies["/" + name]!), "\(probe.base)/\(name)"] }
            let result = try await ProcessRunner.run(loader.path, arguments, timeout: 60)
            #expect(result.status == 0, "\(mode): \(result.stderr)")
            for name in ["a", "b", "c"] {
                #expect((try? Data(contentsOf: URL(fileURLWithPath: loader.folder + "/\(name)"))) == Data(bodies["/" + name]!), "\(mode): \(name)")
            }
            #expect(!result.stderr.contains("continuing from"), "\(mode): a reconnect, not a retry: \(result.stderr)")
            switch mode {
            case .keepAlive:
                // One connection, one read holding all three requests.
                #expect(probe.reads == [["/a", "/b", "/c"]], "\(probe.reads)")
            case .firstThenClose:
                // Asked ahead once; after the server closed with /b and /c unanswered, one request a connection.
                #expect(probe.reads == [["/a", "/b", "/c"], ["/b"], ["/c"]], "\(probe.reads)")
            }
        }
    }

    @Test("cut at 30 % and at 70 %: the load continues from the byte it reached, with If-Range, and the digest holds")
    func resumes() async throws {
        let root = try HTTPTestRoot()
        let loader = try Loader()
        defer { root.cleanup(); loader.cleanup() }
        let bytes = try root.writeBinary(Self.file, size: Self.size)
        try await withHTTPService(root: root, inventory: InventoryBox(try httpTestInventory())) { port, _ in
            // Counts include the answer's head (a few hundred bytes), so the cuts land just short of 30 % and 70 %.
            let proxy = try CuttingProxy(upstream: port, cuts: [Self.size * 3 / 10, Self.size * 4 / 10])
            defer { proxy.stop() }
            let result = try await loader.run("http://127.0.0.1:\(proxy.port)/\(Self.file)", sha256: Self.hex(bytes))
            #expect(result.status == 0, "\(result.stderr)")
            #expect(loader.written == Data(bytes))
            #expect(result.stderr.contains("2 resumed"), "\(result.stderr)")
            let heads = proxy.heads
            #expect(heads.count == 3)
            let ranges = heads.compactMap { head in head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("range: bytes=") } }
            #expect(ranges.count == 2, "\(heads)")
            // Each continues where the previous answer stopped: past the first cut, then past the second.
            let starts = ranges.compactMap { Int($0.dropFirst("range: bytes=".count).dropLast()) }
            #expect(starts.count == 2 && starts[0] > Self.size * 29 / 100 && starts[0] < Self.size * 3 / 10)
            #expect(starts.count == 2 && starts[1] > Self.size * 69 / 100 && starts[1] < Self.size * 7 / 10)
            #expect(heads.dropFirst().allSatisfy { $0.lowercased().contains("\r\nif-range: ") }, "\(heads)")
        }
    }

    @Test("the server restarted mid-download: the load waits it out and finishes")
    func serverRestart() async throws {
        let root = try HTTPTestRoot()
        let loader = try Loader()
        defer { root.cleanup(); loader.cleanup() }
        let bytes = try root.writeBinary(Self.file, size: Self.size)
        let port = try freeLoopbackPort()
        let inventory = InventoryBox(try httpTestInventory())
        let proxy = try CuttingProxy(upstream: port, cuts: [Self.size / 2])
        defer { proxy.stop() }
        // The first server answers until the proxy cuts, then stops; the loader retries against nothing
        // (connection refused) until the second one is up on the same port.
        let load = try await withHTTPService(root: root, inventory: inventory, configure: { $0.port = port }) { _, _ in
            let load = Task { try await loader.run("http://127.0.0.1:\(proxy.port)/\(Self.file)", sha256: Self.hex(bytes)) }
            let deadline = Date().addingTimeInterval(30)
            while proxy.cutCount == 0 && Date() < deadline { try await Task.sleep(for: .milliseconds(10)) }
            return load
        }
        try await Task.sleep(for: .seconds(2))
        let result = try await withHTTPService(root: root, inventory: inventory, configure: { $0.port = port }) { _, _ in
            try await load.value
        }
        #expect(result.status == 0, "\(result.stderr)")
        #expect(loader.written == Data(bytes))
        #expect(result.stderr.contains("connection closed at byte"), "\(result.stderr)")
        // The cut, at least one attempt while no server listened, and the one that finished.
        #expect(proxy.heads.count >= 3, "the loader never met the stopped server:\n\(result.stderr)")
    }

    /// imagebuild publish never changes a file under the same name (image paths carry their digest), but
    /// a hand-kept server may. The boot server's ETag is weak (Hummingbird's), so If-Range carries
    /// Last-Modified, which has one-second resolution: a same-size replacement within that second can
    /// only be caught by the digest. Either way the loader never exits 0 with a mix of two files.
    @Test("the file replaced between two attempts: exit 6 when size or version tell, else the digest (4); never 0",
          arguments: [Self.size + 1, Self.size])
    func fileChanged(newSize: Int) async throws {
        let root = try HTTPTestRoot()
        let loader = try Loader()
        defer { root.cleanup(); loader.cleanup() }
        let bytes = try root.writeBinary(Self.file, size: Self.size)
        try await withHTTPService(root: root, inventory: InventoryBox(try httpTestInventory())) { port, _ in
            let proxy = try CuttingProxy(upstream: port, cuts: [Self.size / 2]) {
                _ = try? root.writeBinary(Self.file + ".new", size: newSize, seed: 2)
                rename(root.root + "/" + Self.file + ".new", root.root + "/" + Self.file)
            }
            defer { proxy.stop() }
            let result = try await loader.run("http://127.0.0.1:\(proxy.port)/\(Self.file)", sha256: Self.hex(bytes))
            if newSize != Self.size {
                #expect(result.status == 6 && result.stderr.contains("changed on the server"), "\(result.stderr)")
            } else {
                #expect(result.status == 6 || result.status == 4, "\(result.stderr)")
            }
        }
    }

    @Test("one corrupted byte: exit 4 with both digests; a wrong URL, https or a bad digest are refused")
    func refusals() async throws {
        let root = try HTTPTestRoot()
        let loader = try Loader()
        defer { root.cleanup(); loader.cleanup() }
        var bytes = try root.writeBinary(Self.file, size: Self.size)
        let good = Self.hex(bytes)
        bytes[Self.size / 3] ^= 0x01
        try Data(bytes).write(to: URL(fileURLWithPath: root.root + "/" + Self.file))
        let bad = Self.hex(bytes)
        try await withHTTPService(root: root, inventory: InventoryBox(try httpTestInventory())) { port, _ in
            let corrupt = try await loader.run("http://127.0.0.1:\(port)/\(Self.file)", sha256: good)
            #expect(corrupt.status == 4 && corrupt.stderr.contains("sha256 mismatch") && corrupt.stderr.contains(good)
                    && corrupt.stderr.contains(bad), "\(corrupt.stderr)")

            let missing = try await loader.run("http://127.0.0.1:\(port)/images/none.tar.gz", retries: 2)
            #expect(missing.status == 3 && missing.stderr.contains("404"), "\(missing.stderr)")
        }
        let https = try await loader.run("https://127.0.0.1/x")
        #expect(https.status == 2 && https.stderr.contains("https is not supported"))
        let digest = try await loader.run("http://127.0.0.1/x", sha256: "abc")
        #expect(digest.status == 2 && digest.stderr.contains("64 hex digits"))
    }
}

extension StageOneLoaderTests {
    /// The last line on standard error: what stage 1 turns into the boot's failure.
    static func lastLine(_ result: ProcessResult) -> String {
        result.stderr.split(separator: "\n").last.map(String.init) ?? ""
    }

    /// Binding below 1024 needs root: the node's stage 1 is root, and so is the suite's CI.
    @Test("-P connects from a port in 512-1023 on every attempt; without it the port is an ephemeral one",
          .enabled(if: getuid() == 0, "binding a privileged port needs root"))
    func privilegedSourcePort() async throws {
        let loader = try Loader()
        defer { loader.cleanup() }
        let answers = Mutex(0)
        let server = try ScriptedHTTPServer { _ in
            // The first answer is a 503, so the retry's connection is seen too.
            answers.withLock { count in count += 1; return count == 1 ? .text(503, "Service Unavailable", "busy") : .ok(Data("secret".utf8)) }
        }
        defer { server.stop() }
        let result = try await loader.run(server.base + "/secrets", options: ["-P"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(loader.written == Data("secret".utf8))
        let ports = server.requests.map(\.peerPort)
        #expect(ports.count == 2 && ports.allSatisfy { (512...1023).contains($0) }, "source ports \(ports)")

        let plain = try await loader.run(server.base + "/secrets")
        #expect(plain.status == 0, "\(plain.stderr)")
        #expect(server.requests.count == 3 && server.requests[2].peerPort >= 1024, "source port \(server.requests.last?.peerPort ?? -1)")
    }

    @Test("-H headers arrive on every attempt; CR or LF in one, a malformed one or a ninth are usage errors and send nothing")
    func extraHeaders() async throws {
        let loader = try Loader()
        defer { loader.cleanup() }
        let answers = Mutex(0)
        let server = try ScriptedHTTPServer { _ in
            answers.withLock { count in count += 1; return count == 1 ? .text(502, "Bad Gateway", "") : .ok(Data("x".utf8)) }
        }
        defer { server.stop() }
        let uuid = "X-Imagebuild-Product-UUID: 4c4c4544-0042-3510-8052-b4c04f4b4d32"
        let serial = "X-Imagebuild-Product-Serial: CZ 2134 XY"
        let result = try await loader.run(server.base + "/secrets", options: ["-H", uuid, "-H", serial])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(server.requests.count == 2)
        for request in server.requests {
            #expect(request.header("X-Imagebuild-Product-UUID") == "4c4c4544-0042-3510-8052-b4c04f4b4d32")
            #expect(request.header("X-Imagebuild-Product-Serial") == "CZ 2134 XY")
        }

        for (header, says) in [("X-A: b\r\nX-Injected: 1", "CR or LF"), ("X-A: b\nX-Injected: 1", "CR or LF"),
                               ("X-A: b\r", "CR or LF"), ("no colon", "'Name: value'"), (": empty name", "'Name: value'")] {
            let refused = try await loader.run(server.base + "/secrets", options: ["-H", header])
            #expect(refused.status == 2 && refused.stderr.contains(says), "\(header.debugDescription): \(refused.stderr)")
        }
        let nine = (1...9).flatMap { ["-H", "X-\($0): v"] }
        let tooMany = try await loader.run(server.base + "/secrets", options: nine)
        #expect(tooMany.status == 2 && tooMany.stderr.contains("at most 8"), "\(tooMany.stderr)")
        #expect(server.requests.count == 2, "a refused command line sent a request")
    }

    @Test("a 403 is final: one request, exit 3, and the last line is 'HTTP 403 Forbidden: <the body's first line>'")
    func refusalIsFinal() async throws {
        let loader = try Loader()
        defer { loader.cleanup() }
        let long = String(repeating: "a", count: 300)
        let server = try ScriptedHTTPServer { request in
            switch request.path {
            case "/secrets": .text(403, "Forbidden", "not from the node's address 10.77.0.11\nsecond line\n")
            case "/noisy": .text(404, "Not Found", "\u{1b}[31mno\tsuch\u{7f} file \u{00e9}t\u{00e9}\r\nmore")
            case "/long": .text(410, "Gone", long)
            default: .text(404, "Not Found", "")
            }
        }
        defer { server.stop() }
        let refused = try await loader.run(server.base + "/secrets", retries: 5)
        #expect(refused.status == 3, "\(refused.stderr)")
        #expect(Self.lastLine(refused) == "imagebuild-fetch: HTTP 403 Forbidden: not from the node's address 10.77.0.11", "\(refused.stderr)")
        #expect(server.requests(to: "/secrets").count == 1, "a 403 was asked again")

        // Control characters and non-ASCII bytes dropped; at most 200 bytes of the line; no body, no colon.
        let noisy = try await loader.run(server.base + "/noisy", retries: 5)
        #expect(noisy.status == 3 && Self.lastLine(noisy) == "imagebuild-fetch: HTTP 404 Not Found: [31mnosuch file t", "\(noisy.stderr)")
        let cut = try await loader.run(server.base + "/long", retries: 5)
        #expect(cut.status == 3 && Self.lastLine(cut) == "imagebuild-fetch: HTTP 410 Gone: " + String(long.prefix(200)), "\(cut.stderr)")
        let empty = try await loader.run(server.base + "/none", retries: 5)
        #expect(empty.status == 3 && Self.lastLine(empty) == "imagebuild-fetch: HTTP 404 Not Found", "\(empty.stderr)")
        #expect(server.requests.count == 4, "\(server.requests.map(\.path))")
    }

    @Test("a 503 is retried with back-off: it recovers, and when it never does the last line is the last answer")
    func serverErrorsAreRetried() async throws {
        let loader = try Loader()
        defer { loader.cleanup() }
        let answers = Mutex(0)
        let server = try ScriptedHTTPServer { request in
            if request.path == "/always" { return .text(503, "Service Unavailable", "rendering, try again") }
            return answers.withLock { count in count += 1; return count <= 2 ? .text(503, "Service Unavailable", "busy") : .ok(Data("files".utf8)) }
        }
        defer { server.stop() }
        let recovered = try await loader.run(server.base + "/secrets", retries: 4)
        #expect(recovered.status == 0 && loader.written == Data("files".utf8), "\(recovered.stderr)")
        #expect(server.requests(to: "/secrets").count == 3)
        #expect(recovered.stderr.contains("HTTP 503 Service Unavailable: busy; continuing from byte 0 in 1 s"), "\(recovered.stderr)")

        let failed = try await loader.run(server.base + "/always", retries: 2)
        #expect(failed.status == 3, "\(failed.stderr)")
        #expect(server.requests(to: "/always").count == 2)
        #expect(failed.stderr.contains("/always: 2 attempts in a row failed"), "\(failed.stderr)")
        #expect(Self.lastLine(failed) == "imagebuild-fetch: HTTP 503 Service Unavailable: rendering, try again", "\(failed.stderr)")
    }
}

/// A loopback port nothing listens on right now.
func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    guard bound else { throw ProcessError("no free loopback port: \(String(cString: strerror(errno)))") }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// A TCP proxy on loopback that passes the n-th connection's answer on for `cuts[n]` bytes and then
/// closes both ends (a broken connection, as a node sees one); connections past the list pass whole.
/// It records each request head it forwards. One thread per connection; tests stop it by `stop()`.
final class CuttingProxy: @unchecked Sendable {
    let port: Int
    private let listener: Int32
    private let upstream: Int
    private let state = Mutex<(cuts: [Int], heads: [String], cut: Int)>(([], [], 0))
    private let afterCut: @Sendable () -> Void

    init(upstream: Int, cuts: [Int], afterCut: @escaping @Sendable () -> Void = {}) throws {
        self.upstream = upstream
        self.afterCut = afterCut
        state.withLock { $0.cuts = cuts }
        (listener, port) = try listenOnLoopback(backlog: 16, what: "proxy")
        Thread { [self] in acceptLoop() }.start()
    }

    var heads: [String] { state.withLock { $0.heads } }
    var cutCount: Int { state.withLock { $0.cut } }

    func stop() { shutdown(listener, Int32(SHUT_RDWR)); close(listener) }

    private func acceptLoop() {
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 { if errno == EINTR { continue } else { return } }
            let limit = state.withLock { $0.cuts.isEmpty ? Int.max : $0.cuts.removeFirst() }
            Thread { [self] in relay(client, limit: limit) }.start()
        }
    }

    private func relay(_ client: Int32, limit: Int) {
        defer { close(client) }
        var head = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        while !head.suffix(4).elementsEqual([13, 10, 13, 10]) {
            let n = read(client, &buffer, 1)
            if n <= 0 { return }
            head.append(buffer[0])
        }
        state.withLock { $0.heads.append(String(decoding: head, as: UTF8.self)) }
        let server = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        defer { close(server) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = in_port_t(UInt16(upstream).bigEndian)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(server, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
        guard connected, write(server, head, head.count) == head.count else { return }
        var passed = 0
        while passed < limit {
            let n = read(server, &buffer, min(buffer.count, limit - passed))
            if n <= 0 { return }
            var sent = 0
            while sent < n {
                let m = buffer.withUnsafeBytes { send(client, $0.baseAddress! + sent, n - sent, Int32(MSG_NOSIGNAL)) }
                if m <= 0 { return }
                sent += m
            }
            passed += n
        }
        if limit != Int.max {
            afterCut()
            state.withLock { $0.cut += 1 }
        }
    }
}

/// A raw HTTP/1.1 server for the loader's pipelining: it records the requests that arrive in each read
/// of each connection, and answers a read's requests in one write (`keepAlive`; a request asking to
/// close is answered last and the connection closed), or only the first of a connection's first read,
/// saying keep-alive, and then closes (`firstThenClose`: a server that drops what was asked ahead).
final class PipelineProbe: @unchecked Sendable {
    enum Mode: Sendable { case keepAlive, firstThenClose }

    let port: Int
    private let listener: Int32
    private let bodies: [String: [UInt8]]
    private let mode: Mode
    private let recorded = Mutex<[[String]]>([])

    init(bodies: [String: [UInt8]], mode: Mode) throws {
        self.bodies = bodies
        self.mode = mode
        (listener, port) = try listenOnLoopback(backlog: 16, what: "pipelining probe")
        Thread { [self] in acceptLoop() }.start()
    }

    var base: String { "http://127.0.0.1:\(port)" }
    /// Per read with at least one whole request, in order: the paths asked for in it.
    var reads: [[String]] { recorded.withLock { $0 } }

    func stop() { shutdown(listener, Int32(SHUT_RDWR)); close(listener) }

    private func acceptLoop() {
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 { if errno == EINTR { continue } else { return } }
            Thread { [self] in serve(client) }.start()
        }
    }

    private func serve(_ client: Int32) {
        defer { close(client) }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var pending = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let n = read(client, &chunk, chunk.count)
            if n <= 0 { return }
            pending += chunk[..<n]
            var paths: [String] = [], closing = false
            while !closing, let end = pending.firstRange(of: [13, 10, 13, 10]) {
                let head = String(decoding: pending[..<end.upperBound], as: UTF8.self)
                pending.removeSubrange(..<end.upperBound)
                paths.append(head.split(separator: " ").dropFirst().first.map(String.init) ?? "?")
                closing = head.lowercased().contains("connection: close")
            }
            if paths.isEmpty { continue }
            recorded.withLock { $0.append(paths) }
            let answered = mode == .firstThenClose ? [paths[0]] : paths
            var answer = [UInt8]()
            for (index, path) in answered.enumerated() {
                let body = bodies[path] ?? []
                let close = closing && index == answered.count - 1
                answer += Array("HTTP/1.1 200 OK\r\nContent-Length: \(body.count)\r\nConnection: \(close ? "close" : "keep-alive")\r\n\r\n".utf8) + body
            }
            guard answer.withUnsafeBytes({ sendAll(client, $0) }) else { return }
            if closing || mode == .firstThenClose {
                lingerBeforeClose(client)
                return
            }
        }
    }
}
