import BootProtocols
import BootServer
import Foundation
import Logging
import NIOCore
import NIOPosix
import Testing

/// A private network namespace whose loopback drops a share of UDP datagrams (nftables, since this
/// kernel has no netem). The rule sits in prerouting, which loopback traffic passes once per datagram,
/// so DATA and ACK are dropped alike.
struct LossyNamespace {
    let name: String

    /// Why the test cannot run here, or nil. Checked by doing the real thing once, so "ip exists but we
    /// are not root" or "nft exists but the kernel has no nf_tables" are caught too.
    static func unavailableReason() async -> String? {
        guard geteuid() == 0 else { return "needs root for network namespaces and nftables" }
        for tool in ["/usr/sbin/ip", "/usr/sbin/nft", "/usr/bin/curl", "/usr/bin/atftp"] where !FileManager.default.isExecutableFile(atPath: tool) {
            return "\(tool) is not installed"
        }
        do {
            let probe = try await LossyNamespace(perMille: 0)
            await probe.remove()
        } catch {
            return "cannot set up a lossy namespace: \(error)"
        }
        return nil
    }

    init(perMille: Int) async throws {
        name = "ibtest-loss-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try await Self.check(["/usr/sbin/ip", "netns", "add", name])
        do {
            try await Self.check(["/usr/sbin/ip", "-n", name, "link", "set", "lo", "up"])
            let rule = perMille > 0 ? "meta l4proto udp numgen random mod 1000 < \(perMille) counter drop" : ""
            // nft wants a newline (or ';') after each block, even on one line.
            let ruleset = "table inet loss {\n chain pre {\n  type filter hook prerouting priority -300; policy accept;\n  \(rule)\n }\n}\n"
            let file = NSTemporaryDirectory() + name + ".nft"
            try ruleset.write(toFile: file, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(atPath: file) }
            try await Self.check(["/usr/sbin/ip", "netns", "exec", name, "/usr/sbin/nft", "-f", file])
        } catch {
            await remove()
            throw error
        }
    }

    /// Runs a command inside the namespace, bounded by `timeoutSeconds`.
    func run(_ arguments: [String], timeoutSeconds: Int) async throws -> CommandResult {
        try await runCommand(["/usr/sbin/ip", "netns", "exec", name] + arguments, timeoutSeconds: timeoutSeconds)
    }

    /// Datagrams the loss rule has dropped so far: proof that the test saw loss at all.
    func dropped() async throws -> Int {
        let listing = try await run(["/usr/sbin/nft", "list", "chain", "inet", "loss", "pre"], timeoutSeconds: 10).output
        guard let range = listing.range(of: "packets ") else { return 0 }
        return Int(listing[range.upperBound...].prefix(while: \.isNumber)) ?? 0
    }

    /// An event loop group whose threads all joined the namespace: sockets made on them (the server's
    /// listener and transfer sockets) live in it.
    func joinedEventLoopGroup(threads: Int) async throws -> MultiThreadedEventLoopGroup {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        let path = "/run/netns/" + name
        do {
            for loop in group.makeIterator() {
                try await loop.submit {
                    let descriptor = open(path, O_RDONLY | O_CLOEXEC)
                    guard descriptor >= 0 else { throw NamespaceError.failed("open \(path): errno \(errno)") }
                    defer { close(descriptor) }
                    // CLONE_NEWNET; setns is not in Swift's Glibc module, so it is looked up by name.
                    guard let symbol = dlsym(nil, "setns") else { throw NamespaceError.failed("no setns in libc") }
                    let setns = unsafeBitCast(symbol, to: (@convention(c) (CInt, CInt) -> CInt).self)
                    guard setns(descriptor, 0x4000_0000) == 0 else { throw NamespaceError.failed("setns: errno \(errno)") }
                }.get()
            }
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
        return group
    }

    func remove() async {
        _ = try? await runCommand(["/usr/sbin/ip", "netns", "del", name], timeoutSeconds: 10)
    }

    private static func check(_ arguments: [String]) async throws {
        let result = try await runCommand(arguments, timeoutSeconds: 20)
        guard result.status == 0 else {
            throw NamespaceError.failed("\(arguments.joined(separator: " ")): exit \(result.status): \(result.output)")
        }
    }

    enum NamespaceError: Error, CustomStringConvertible {
        case failed(String)
        var description: String {
            switch self { case .failed(let what): what }
        }
    }
}

/// Issue 8: transfers over a lossy link finish, with the right bytes, in bounded time.
@Suite("TFTP loss: real clients through 5 % packet loss", .serialized)
struct TFTPLossTests {
    @Test("loss: 20 downloads of 1 MiB through 5 % loss all finish intact", .timeLimit(.minutes(2)))
    func twentyDownloadsThroughFivePercentLoss() async throws {
        if let reason = await LossyNamespace.unavailableReason() { try Test.cancel("skipped: \(reason)") }
        let root = try TemporaryRoot()
        defer { root.cleanup() }
        let expected = try root.write("image", size: 1 << 20)
        let namespace = try await LossyNamespace(perMille: 50)
        let group: MultiThreadedEventLoopGroup
        do {
            group = try await namespace.joinedEventLoopGroup(threads: 1)
        } catch {
            await namespace.remove()
            throw error
        }
        let reports = ReportBox()
        var configuration = TFTPServerConfiguration(root: root.path, host: "127.0.0.1", port: 0)
        configuration.maximumTransfersPerClient = 20  // every client shares 127.0.0.1
        let server = TFTPServer(configuration: configuration, logger: testLogger("tftp-loss-test"),
                                eventLoopGroup: group, observer: { reports.append($0) })
        do {
            try await serving(server) { addresses in
                let port = addresses[0].port!
                let clock = ContinuousClock()
                let started = clock.now
                // All at once: the clients' own retry timers (curl re-sends a lost RRQ only after seconds)
                // then overlap instead of adding up, and the server handles loss on many transfers at a time.
                let outcomes = try await withThrowingTaskGroup(of: (Int, String?).self) { tasks in
                    for index in 0..<20 {
                        tasks.addTask {
                            let output = root.path + "/out-\(index)"
                            let command = index % 2 == 0
                                ? ["/usr/bin/curl", "-s", "-o", output, "--tftp-blksize", "1468", "tftp://127.0.0.1:\(port)/image"]
                                : ["/usr/bin/atftp", "--option", "blksize 1468", "-g", "-r", "image", "-l", output, "127.0.0.1", String(port)]
                            let result = try await namespace.run(command, timeoutSeconds: 240)  // a bound, not a speed goal (benchmarks/tftp-loss.sh)
                            let received = FileManager.default.contents(atPath: output)
                            if result.status != 0 { return (index, "\(command[0]) exit \(result.status): \(result.output)") }
                            if received != expected { return (index, "\(command[0]): \(received?.count ?? -1) bytes, content differs") }
                            return (index, nil)
                        }
                    }
                    var failures: [(Int, String?)] = []
                    for try await outcome in tasks where outcome.1 != nil { failures.append(outcome) }
                    return failures
                }
                let elapsed = clock.now - started
                let dropped = try await namespace.dropped()
                #expect(outcomes.isEmpty, "failed downloads: \(outcomes)")
                #expect(dropped > 0, "the loss rule dropped nothing: the test proved nothing")
                print("TFTP, 20 downloads of 1 MiB through 5 % loss: \(elapsed), \(dropped) datagrams dropped")
                // The server's view: completed, or delivered where the client's final ACK was the datagram
                // lost (the clients do not linger to repeat it, RFC 1350's "dally").
                _ = await eventually(timeout: .seconds(30)) { reports.all.count >= 20 }
                for report in reports.all {
                    #expect(report.result == .completed || report.result == .delivered,
                            "a transfer failed server-side: \(report.result)")
                }
                let delivered = reports.all.filter { $0.result == .delivered }.count
                print("TFTP loss: \(delivered) of 20 transfers lost their final ACK (reported delivered)")
                #expect(reports.all.count == 20, "\(reports.all.count) server reports")
                let retransmissions = reports.all.reduce(0) { $0 + $1.retransmissions }
                print("TFTP loss: 20 x 1 MiB through 5 % loss in \(elapsed), \(dropped) datagrams dropped, \(retransmissions) retransmissions")
            }
        } catch {
            try? await group.shutdownGracefully()
            await namespace.remove()
            throw error
        }
        try? await group.shutdownGracefully()
        await namespace.remove()
    }
}
