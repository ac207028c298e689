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
        func run(_ url: String, sha256: String? = nil, retries: Int = 8) async throws -> ProcessResult {
            var arguments = ["-r", String(retries), "-t", "5", "-o", output]
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
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let listening = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && listen(fd, 16) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard listening else { close(fd); throw ProcessError("proxy: \(String(cString: strerror(errno)))") }
        listener = fd
        port = Int(UInt16(bigEndian: address.sin_port))
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
