import BootProtocols
import BootServer
import Foundation
import NIOCore
import Testing

/// The server against real clients over 127.0.0.1. Serialized: the machine has two cores, and parallel
/// lock-step transfers would make each other's timings (and the suite's run time) unpredictable.
@Suite("TFTP server with real clients", .serialized)
struct TFTPServerClientTests {
    static let sizes = [0, 511, 512, 513]

    private func fetchAndCompare(_ client: String, command: (String, String) -> [String], files: [(String, Data)],
                                 root: TemporaryRoot) async throws {
        try await withTFTPServer(root: root) { _, address, reports in
            let port = address.port!
            for (name, expected) in files {
                let output = root.path + "/../" + UUID().uuidString
                defer { try? FileManager.default.removeItem(atPath: output) }
                let arguments = command(name, output).map { $0.replacingOccurrences(of: "PORT", with: String(port)) }
                // Lock-step 512-byte transfers of 32 MiB take ~15 s on an idle 2-core machine and far
                // longer on a loaded one: bound generously, the check is correctness, not speed.
                let result = try await runCommand(arguments, timeoutSeconds: 300)
                #expect(result.status == 0, "\(client) \(name): exit \(result.status): \(result.output)")
                let received = FileManager.default.contents(atPath: output)
                #expect(received?.count == expected.count, "\(client) \(name): \(received?.count ?? -1) bytes, expected \(expected.count)")
                #expect(received == expected, "\(client) \(name): content differs")
                let report = await reports.waitFor(name)
                #expect(report?.result == .completed, "\(client) \(name): \(report.map { "\($0.result)" } ?? "no report")")
                #expect(report?.bytes == UInt64(expected.count))
            }
        }
    }

    @Test func curlWithBlksize() async throws {
        let root = try TemporaryRoot()
        defer { root.cleanup() }
        var files: [(String, Data)] = []
        for size in Self.sizes { files.append(("f\(size)", try root.write("f\(size)", size: size))) }
        files.append(("big/8mib", try root.write("big/8mib", size: 8 << 20)))
        try await fetchAndCompare("curl", command: { name, output in
            ["curl", "-sS", "--tftp-blksize", "1468", "-o", output, "tftp://127.0.0.1:PORT/\(name)"]
        }, files: files, root: root)
    }

    @Test func curlRolloverAtDefaultBlockSize() async throws {
        let root = try TemporaryRoot()
        defer { root.cleanup() }
        let file = try root.write("rollover", size: 65536 * 512, salt: 3)
        try await fetchAndCompare("curl", command: { name, output in
            ["curl", "-sS", "-o", output, "tftp://127.0.0.1:PORT/\(name)"]
        }, files: [("rollover", file)], root: root)
    }

    @Test func tftpHPA() async throws {
        let root = try TemporaryRoot()
        defer { root.cleanup() }
        var files: [(String, Data)] = []
        for size in Self.sizes { files.append(("f\(size)", try root.write("f\(size)", size: size))) }
        // Lock-step at 512: 65535 blocks end exactly at the last number, 65536 force a rollover.
        files.append(("r65535", try root.write("r65535", size: 65535 * 512, salt: 1)))
        files.append(("r65536", try root.write("r65536", size: 65536 * 512, salt: 2)))
        try await fetchAndCompare("tftp-hpa", command: { name, output in
            ["tftp", "-m", "binary", "127.0.0.1", "PORT", "-c", "get", name, output]
        }, files: files, root: root)
    }

    @Test func atftpWithBlksizeAndWindowsize() async throws {
        let root = try TemporaryRoot()
        defer { root.cleanup() }
        var files: [(String, Data)] = []
        for size in Self.sizes { files.append(("f\(size)", try root.write("f\(size)", size: size))) }
        files.append(("big/8mib", try root.write("big/8mib", size: 8 << 20, salt: 4)))
        try await fetchAndCompare("atftp", command: { name, output in
            ["atftp", "--option", "blksize 1468", "--option", "windowsize 16", "-g", "-r", name, "-l", output, "127.0.0.1", "PORT"]
        }, files: files, root: root)
    }

    @Test func busybox() async throws {
        let root = try TemporaryRoot()
        defer { root.cleanup() }
        var files: [(String, Data)] = []
        for size in Self.sizes { files.append(("f\(size)", try root.write("f\(size)", size: size))) }
        files.append(("big/8mib", try root.write("big/8mib", size: 8 << 20, salt: 5)))
        try await fetchAndCompare("busybox", command: { name, output in
            ["busybox", "tftp", "-g", "-b", "1468", "-r", name, "-l", output, "127.0.0.1", "PORT"]
        }, files: files, root: root)
    }
}

@Suite("TFTP server paths, limits and protocol edges", .serialized)
struct TFTPServerBehaviourTests {
    /// The first answer to an RRQ for `path`.
    private func firstAnswer(_ path: String, server: SocketAddress, options: TFTPOptions = [:]) async throws -> TFTPPacket? {
        let client = try await RawTFTPClient()
        try await client.send(.readRequest(TFTPRequest(filename: path, options: options)), to: server)
        let answer = try await client.receive()?.packet
        await client.close()
        return answer
    }

    private func errorCode(_ packet: TFTPPacket?) -> TFTPErrorCode? {
        if case .error(let code, _)? = packet { return code }
        return nil
    }

    @Test func pathsAreConfinedToTheRoot() async throws {
        let root = try TemporaryRoot()
        defer { root.cleanup() }
        let outside = try TemporaryRoot()
        defer { outside.cleanup() }
        try outside.write("secret", size: 10)
        try root.write("boot/vmlinuz", size: 100)
        try root.write("pxelinux.cfg/default", size: 20)
        try root.write("private", size: 10, mode: 0o600)
        // What publish keeps for itself: world-readable, and still never served (see ServedNames).
        try root.write(".publish/lock", size: 0)
        try root.write(".publish/gen-1/publish.json", size: 10)
        try FileManager.default.createSymbolicLink(atPath: root.path + "/publish.json", withDestinationPath: ".publish/gen-1/publish.json")
        try FileManager.default.createSymbolicLink(atPath: root.path + "/escape", withDestinationPath: outside.path + "/secret")
        try FileManager.default.createSymbolicLink(atPath: root.path + "/escape-dir", withDestinationPath: outside.path)
        try FileManager.default.createSymbolicLink(atPath: root.path + "/inside", withDestinationPath: "boot/vmlinuz")
        // openat2(RESOLVE_BENEATH) refuses every absolute symlink; one that stays inside must still be served.
        try FileManager.default.createSymbolicLink(atPath: root.path + "/inside-absolute", withDestinationPath: root.path + "/boot/vmlinuz")
        try FileManager.default.createSymbolicLink(atPath: root.path + "/dangling", withDestinationPath: "boot/missing")
        try FileManager.default.createSymbolicLink(atPath: root.path + "/device", withDestinationPath: "/dev/zero")
        #expect(mkfifo(root.path + "/fifo", 0o644) == 0)
        #expect(mknod(root.path + "/null", S_IFCHR | 0o666, dev_t(0x103) /* makedev(1, 3): /dev/null */) == 0)

        try await withTFTPServer(root: root) { _, address, _ in
            let refused: [(String, TFTPErrorCode)] = [
                ("../" + (outside.path as NSString).lastPathComponent + "/secret", .accessViolation),
                ("boot/../../etc/passwd", .accessViolation),
                ("..\\..\\etc\\passwd", .accessViolation),
                ("escape", .accessViolation),
                ("escape-dir/secret", .accessViolation),
                ("device", .accessViolation),
                ("fifo", .accessViolation),
                ("null", .accessViolation),
                ("boot", .accessViolation),
                ("private", .accessViolation),
                ("/etc/passwd", .fileNotFound),
                ("missing", .fileNotFound),
                ("dangling", .fileNotFound),
                ("boot/vmlinuz/x", .fileNotFound),
                ("pxelinux.cfg/01-aa-bb-cc-dd-ee-ff", .fileNotFound),
                (".publish/lock", .fileNotFound),
                ("publish.json", .fileNotFound),
                ("/.publish/gen-1/publish.json", .fileNotFound),
            ]
            for (path, code) in refused {
                let answer = try await firstAnswer(path, server: address)
                #expect(errorCode(answer) == code, "'\(path)' answered \(answer.map { "\($0)" } ?? "nothing")")
            }
            for path in ["boot/vmlinuz", "/boot/vmlinuz", "//boot/./vmlinuz", "\\boot\\vmlinuz", "inside", "inside-absolute", "pxelinux.cfg\\default"] {
                let answer = try await firstAnswer(path, server: address)
                guard case .data(1, _)? = answer else {
                    Issue.record("'\(path)' answered \(answer.map { "\($0)" } ?? "nothing") instead of DATA 1")
                    continue
                }
            }
        }
    }

    @Test func writeRequestsAreRefused() async throws {
        let root = try TemporaryRoot()
        defer { root.cleanup() }
        try await withTFTPServer(root: root) { _, address, reports in
            let client = try await RawTFTPClient()
            try await client.send(.writeRequest(TFTPRequest(filename: "upload")), to: address)
            #expect(errorCode(try await client.receive()?.packet) == .accessViolation)
            await client.close()
            #expect(!FileManager.default.fileExists(atPath: root.path + "/upload"))
            let report = await reports.waitFor("upload")
            #expect(report?.result.label == "rejected")
        }
    }

    @Test func pxeProbeThenTransferFromAnEphemeralPort() async throws {
        let root = try TemporaryRoot()
        defer { root.cleanup() }
        let file = try root.write("pxelinux.0", size: 3000)
        try await withTFTPServer(root: root) { server, address, reports in
            let client = try await RawTFTPClient()
            // 1. tsize probe, aborted with error 8, as PXE ROMs do.
            try await client.send(.readRequest(TFTPRequest(filename: "pxelinux.0", options: ["tsize": "0"])), to: address)
            let probe = try await client.receive()
            #expect(probe?.packet == .optionAcknowledgement(["tsize": "3000"]))
            #expect(probe?.from.port != address.port, "the transfer must answer from its own port")
            try await client.send(.error(code: .optionNegotiationFailed, message: "abort"), to: probe!.from)
            // 2. The real transfer with blksize.
            try await client.send(.readRequest(TFTPRequest(filename: "pxelinux.0", options: ["blksize": "1468"])), to: address)
            let oack = try await client.receive(notFrom: probe!.from) { _ in true }
            #expect(oack?.packet == .optionAcknowledgement(["blksize": "1468"]))
            var received: [UInt8] = []
            var ack: UInt16 = 0
            var transferPort = oack!.from
            while true {
                try await client.send(.acknowledgement(block: ack), to: transferPort)
                let next = try await client.receive(from: transferPort) { packet in
                    if case .data(let block, _) = packet { return block == ack &+ 1 }
                    return false
                }
                guard let (packet, from) = next, case .data(let block, let payload) = packet else {
                    Issue.record("no DATA")
                    break
                }
                transferPort = from
                #expect(block == ack &+ 1)
                received += payload.readableBytesView
                ack = block
                if payload.readableBytes < 1468 {
                    try await client.send(.acknowledgement(block: ack), to: transferPort)
                    break
                }
            }
            await client.close()
            #expect(Data(received) == file)
            _ = await eventually { reports.all.filter { $0.path == "pxelinux.0" }.count == 2 }
            let results = reports.all.filter { $0.path == "pxelinux.0" }.map(\.result)
            // The abort may be overtaken by the real request from the same port (the server's loops are
            // busy in a full test run); the probe then ends as superseded. Either way it is not a failure.
            #expect(results == [.abortedByClient(code: .optionNegotiationFailed, message: "abort"), .completed]
                    || results == [.superseded, .completed], "\(results)")
            let statistics = try await server.statistics()
            #expect(statistics.completed == 1)
            #expect(statistics.abortedByClient == 1)
            #expect(statistics.activeTransfers == 0)
        }
    }

    @Test func strangerGetsUnknownTransferIDAndTransferContinues() async throws {
        let root = try TemporaryRoot()
        defer { root.cleanup() }
        try root.write("file", size: 1000)
        try await withTFTPServer(root: root) { _, address, _ in
            let client = try await RawTFTPClient()
            let stranger = try await RawTFTPClient()
            try await client.send(.readRequest(TFTPRequest(filename: "file")), to: address)
            let first = try await client.receive()
            guard case .data(1, _)? = first?.packet else {
                Issue.record("no DATA 1")
                return
            }
            try await stranger.send(.acknowledgement(block: 1), to: first!.from)
            #expect(errorCode(try await stranger.receive()?.packet) == .unknownTransferID)
            try await client.send(.acknowledgement(block: 1), to: first!.from)
            let second = try await client.receive(from: first!.from) { packet in
                if case .data(2, _) = packet { return true }
                return false
            }
            guard case .data(2, let payload)? = second?.packet else {
                Issue.record("transfer disturbed by the stranger")
                return
            }
            #expect(payload.readableBytes == 488)
            await client.close()
            await stranger.close()
        }
    }

    @Test func repeatedRequestGetsTheOptionAcknowledgementAgainAtOnce() async throws {
        let root = try TemporaryRoot()
        defer { root.cleanup() }
        let file = try root.write("kernel", size: 3000)
        try await withTFTPServer(root: root) { server, address, _ in
            let client = try await RawTFTPClient()
            let request = TFTPPacket.readRequest(TFTPRequest(filename: "kernel", options: ["blksize": "1024"]))
            try await client.send(request, to: address)
            guard let answer = try await client.receive(where: { $0.opcode == .optionAcknowledgement }) else {
                Issue.record("no OACK")
                return
            }
            let (first, port) = (answer.packet, answer.from)
            // As if that OACK was lost: the client repeats its request to the server port. The answer comes
            // from the same transfer, well before the OACK's own 6 s time-out.
            try await client.send(request, to: address)
            let again = try await client.receive(timeout: .seconds(2), where: { $0.opcode == .optionAcknowledgement })
            #expect(again?.packet == first)
            #expect(again?.from == port)
            try await client.send(.acknowledgement(block: 0), to: port)
            var received: [UInt8] = []
            for block in UInt16(1)...3 {
                // A copy of the previous block may come first: on a loaded host the client's ACK can take
                // longer than the 20 ms retransmission floor (CI saw exactly that).
                let next = try await client.receive(from: port, where: { if case .data(block, _) = $0 { true } else { false } })
                guard case .data(block, let payload)? = next?.packet else {
                    Issue.record("no DATA \(block)")
                    return
                }
                received += Array(buffer: payload)
                try await client.send(.acknowledgement(block: block), to: port)
            }
            #expect(Data(received) == file)
            let statistics = try await server.statistics()
            #expect(statistics.duplicateRequests == 1)
            await client.close()
        }
    }

    @Test func perClientLimitAndDuplicateRequests() async throws {
        let root = try TemporaryRoot()
        defer { root.cleanup() }
        try root.write("file", size: 5000)
        try await withTFTPServer(root: root, configure: { $0.maximumTransfersPerClient = 1 }) { server, address, _ in
            let first = try await RawTFTPClient()
            let second = try await RawTFTPClient()
            try await first.send(.readRequest(TFTPRequest(filename: "file")), to: address)
            guard case .data(1, _)? = try await first.receive()?.packet else {
                Issue.record("no DATA 1")
                return
            }
            // The same RRQ again from the same endpoint is a retransmission, not a second transfer.
            try await first.send(.readRequest(TFTPRequest(filename: "file")), to: address)
            // A second endpoint of the same IP is over the limit.
            try await second.send(.readRequest(TFTPRequest(filename: "file")), to: address)
            #expect(errorCode(try await second.receive()?.packet) == .notDefined)
            let statistics = try await server.statistics()
            #expect(statistics.duplicateRequests == 1)
            #expect(statistics.activeTransfers == 1)
            #expect(statistics.rejected == 1)
            await first.close()
            await second.close()
        }
    }

    @Test func smallFilesAreCachedAndReloadedWhenChanged() async throws {
        let root = try TemporaryRoot()
        defer { root.cleanup() }
        try root.write("pxelinux.cfg/default", data: Data("LABEL one\n".utf8))
        try await withTFTPServer(root: root) { server, address, _ in
            for _ in 0..<3 {
                let client = try await RawTFTPClient()
                #expect(try await client.download("pxelinux.cfg/default", from: address) == Array("LABEL one\n".utf8))
                await client.close()
            }
            try root.write("pxelinux.cfg/default", data: Data("LABEL two, longer\n".utf8))
            let client = try await RawTFTPClient()
            #expect(try await client.download("pxelinux.cfg/default", from: address) == Array("LABEL two, longer\n".utf8))
            await client.close()
            let statistics = try await server.statistics()
            #expect(statistics.cacheHits == 2)
            #expect(statistics.cacheMisses == 2)
        }
    }

    /// The store opens files below a descriptor of the root; a root replaced under the same path must
    /// be followed (within the store's one-second re-check), as opening by path would.
    @Test func aRootMadeAgainUnderTheSamePathIsFollowed() async throws {
        let root = try TemporaryRoot()
        defer { root.cleanup() }
        try root.write("pxelinux.cfg/default", data: Data("LABEL old\n".utf8))
        try await withTFTPServer(root: root) { _, address, _ in
            var client = try await RawTFTPClient()
            #expect(try await client.download("pxelinux.cfg/default", from: address) == Array("LABEL old\n".utf8))
            await client.close()
            try FileManager.default.moveItem(atPath: root.path, toPath: root.path + ".old")
            defer { try? FileManager.default.removeItem(atPath: root.path + ".old") }
            try FileManager.default.createDirectory(atPath: root.path, withIntermediateDirectories: false)
            try root.write("pxelinux.cfg/default", data: Data("LABEL new\n".utf8))
            try await Task.sleep(for: .milliseconds(1100))
            client = try await RawTFTPClient()
            #expect(try await client.download("pxelinux.cfg/default", from: address) == Array("LABEL new\n".utf8))
            await client.close()
        }
    }

    @Test func hundredsOfConcurrentTransfers() async throws {
        let root = try TemporaryRoot()
        defer { root.cleanup() }
        let small = try root.write("small", size: 20_000)
        let large = try root.write("large", size: 1_500_000)  // above the cache limit: pread path
        let clients = 300
        try await withTFTPServer(root: root, configure: {
            $0.cacheFileSizeLimit = 1 << 20
            $0.maximumTransfersPerClient = clients  // every test client shares 127.0.0.1
        }) { server, address, _ in
            let clock = ContinuousClock()
            let started = clock.now
            let results = try await withThrowingTaskGroup(of: Bool.self) { group in
                for index in 0..<clients {
                    group.addTask {
                        let client = try await RawTFTPClient()
                        let name = index % 10 == 0 ? "large" : "small"
                        let data = try await client.download(name, from: address, options: ["blksize": "1468"])
                        await client.close()
                        return data.map { Data($0) } == (name == "large" ? large : small)
                    }
                }
                var ok = 0
                for try await result in group where result { ok += 1 }
                return ok
            }
            #expect(results == clients)
            let elapsed = clock.now - started
            _ = try await eventually { try await server.statistics().activeTransfers == 0 }
            let statistics = try await server.statistics()
            #expect(statistics.completed == UInt64(clients))
            #expect(statistics.activeTransfers == 0)
            print("TFTP load: \(clients) concurrent transfers (\(statistics.bytesSent) bytes) in \(elapsed)")
        }
    }
}
