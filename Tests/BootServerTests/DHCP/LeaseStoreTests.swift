import BootProtocols
import BootServer
import Foundation
import ImageBuildKit
import Testing

@Suite("Lease store")
struct LeaseStoreTests {
    let logger = dhcpTestLogger("lease-test")

    private func open(_ dir: DHCPTemporaryDirectory, configure: (inout LeaseStoreConfiguration) -> Void = { _ in }) throws -> LeaseStore {
        var configuration = LeaseStoreConfiguration(directory: dir.path)
        configure(&configuration)
        return try LeaseStore(configuration: configuration, logger: logger)
    }

    private func lease(_ n: Int, _ address: IPv4Address, until: Int64) -> DHCPLease {
        DHCPLease(mac: dhcpMAC(n), address: address, expires: dhcpTime(until), hostname: "node\(n)")
    }

    @Test("a committed lease survives reopening; offers do not")
    func reopen() throws {
        let dir = try DHCPTemporaryDirectory()
        defer { dir.cleanup() }
        let store = try open(dir)
        let a = IPv4Address(10, 0, 0, 5), b = IPv4Address(10, 0, 0, 6)
        try store.apply(.offer(lease(2, b, until: 1060)), at: dhcpTime(1000))
        try store.apply(.commit(lease(1, a, until: 2000)), at: dhcpTime(1000))
        #expect(store.holder(of: a, at: dhcpTime(1500)) == dhcpMAC(1))
        #expect(store.holder(of: b, at: dhcpTime(1001)) == dhcpMAC(2))
        #expect(store.holder(of: a, at: dhcpTime(2000)) == nil, "expired at its end time")
        store.close()

        let again = try open(dir)
        defer { again.close() }
        #expect(again.holder(of: a, at: dhcpTime(1500)) == dhcpMAC(1))
        #expect(again.address(heldBy: dhcpMAC(1), at: dhcpTime(1500)) == a)
        #expect(again.holder(of: b, at: dhcpTime(1001)) == nil, "offers are memory only")
        #expect(again.leases(at: dhcpTime(1500)) == [lease(1, a, until: 2000)])
        let text = try String(contentsOfFile: again.journalPath, encoding: .utf8)
        #expect(text.hasPrefix("# imagebuild DHCP lease journal v1"))
        #expect(text.contains("C 1000 52:54:00:77:00:01 10.0.0.5 2000 node1 "))
    }

    @Test("release and decline are journaled; a commit for an address another client holds is refused")
    func releaseDeclineRefuse() throws {
        let dir = try DHCPTemporaryDirectory()
        defer { dir.cleanup() }
        let store = try open(dir)
        let a = IPv4Address(10, 0, 0, 5), b = IPv4Address(10, 0, 0, 6)
        try store.apply(.commit(lease(1, a, until: 5000)), at: dhcpTime(1000))
        #expect(throws: LeaseStoreError.addressHeldByAnother(a, holder: dhcpMAC(1), requester: dhcpMAC(2))) {
            try store.apply(.commit(lease(2, a, until: 5000)), at: dhcpTime(1001))
        }
        #expect(throws: LeaseStoreError.self) { try store.apply(.offer(lease(2, a, until: 1100)), at: dhcpTime(1001)) }
        try store.apply(.commit(lease(2, b, until: 5000)), at: dhcpTime(1002))
        try store.apply(.release(mac: dhcpMAC(1), address: a), at: dhcpTime(1003))
        try store.apply(.decline(mac: dhcpMAC(2), address: b, until: dhcpTime(4000)), at: dhcpTime(1004))
        #expect(store.holder(of: a, at: dhcpTime(1005)) == nil)
        #expect(store.holder(of: b, at: dhcpTime(1005)) == nil)
        #expect(store.isDeclined(b, at: dhcpTime(1005)))
        store.close()

        let again = try open(dir)
        defer { again.close() }
        #expect(again.holder(of: a, at: dhcpTime(1005)) == nil)
        #expect(again.isDeclined(b, at: dhcpTime(3999)))
        #expect(!again.isDeclined(b, at: dhcpTime(4000)))
        // Now free, the address can go to client 2.
        try again.apply(.commit(lease(2, a, until: 6000)), at: dhcpTime(1006))
    }

    @Test("group commit: one fsync covers every record queued while the previous one ran, and completions wait for it")
    func groupCommit() throws {
        let dir = try DHCPTemporaryDirectory()
        defer { dir.cleanup() }
        let gate = DHCPGate()
        let batches = DHCPBox<Int>()
        let store = try open(dir) { configuration in
            configuration.beforeSync = { records in
                batches.append(records)
                if batches.all.count == 1 { gate.wait() }  // hold the first sync open
            }
        }
        let done = DHCPBox<Int>()
        try store.apply(.commit(lease(0, IPv4Address(10, 0, 1, 0), until: 9000)), at: dhcpTime(1000)) { result in
            if case .success = result { done.append(0) }
        }
        #expect(gate.waitForWaiter(), "the first batch reached its sync")
        for n in 1...50 {
            try store.apply(.commit(lease(n, IPv4Address(10, 0, 1, UInt8(n)), until: 9000)), at: dhcpTime(1000)) { result in
                if case .success = result { done.append(n) }
            }
        }
        Thread.sleep(forTimeInterval: 0.1)
        #expect(done.all.isEmpty, "no completion before its fsync")
        gate.release()
        let deadline = Date().addingTimeInterval(5)
        while done.all.count < 51 && Date() < deadline { Thread.sleep(forTimeInterval: 0.01) }
        #expect(done.all.count == 51)
        #expect(batches.all == [1, 50], "the 50 records queued behind the first sync share one")
        #expect(store.statistics.syncs == 2)
        #expect(store.statistics.recordsWritten == 51)
        store.close()
    }

    @Test("compaction rewrites the live set and the store reopens to the same leases")
    func compaction() throws {
        let dir = try DHCPTemporaryDirectory()
        defer { dir.cleanup() }
        let store = try open(dir) { $0.compactAfterRecords = 40 }
        // Ten clients renewing over and over, some moving address, some releasing, one lease expiring.
        var t: Int64 = 1000
        for round in 0..<30 {
            for n in 0..<10 {
                t += 1
                let address = IPv4Address(10, 0, 2, UInt8(n + (round % 3 == 0 ? 100 : 0)))
                if store.holder(of: address, at: dhcpTime(t)).map({ $0 != dhcpMAC(n) }) == true { continue }
                try store.apply(.commit(lease(n, address, until: n == 9 ? 1100 : t + 3600)), at: dhcpTime(t))
            }
        }
        try store.apply(.release(mac: dhcpMAC(3), address: store.address(heldBy: dhcpMAC(3), at: dhcpTime(t))!), at: dhcpTime(t))
        let live = store.leases(at: dhcpTime(t))
        store.compact(at: dhcpTime(t))
        store.close()
        #expect(store.statistics.compactions >= 2, "the threshold triggered compactions along the way too")

        let contents = try LeaseJournalContents.read(path: store.journalPath)
        #expect(contents.records.count == live.count, "only live leases remain: \(contents.records.count) records")
        #expect(contents.tornBytes == 0 && contents.corruptLines == 0)
        #expect(!FileManager.default.fileExists(atPath: store.journalPath + ".compact"))
        let again = try open(dir)
        defer { again.close() }
        #expect(again.leases(at: dhcpTime(t)) == live)
        #expect(live.count == 8, "9 clients still bound minus the released one, the expired one gone")
    }

    @Test("a torn last record is ignored on load and cut off before appending")
    func tornRecord() throws {
        let dir = try DHCPTemporaryDirectory()
        defer { dir.cleanup() }
        let store = try open(dir)
        try store.apply(.commit(lease(1, IPv4Address(10, 0, 0, 1), until: 9000)), at: dhcpTime(1000))
        try store.apply(.commit(lease(2, IPv4Address(10, 0, 0, 2), until: 9000)), at: dhcpTime(1000))
        store.close()
        // A crash in the middle of a write leaves half a line.
        let handle = try #require(FileHandle(forWritingAtPath: store.journalPath))
        handle.seekToEndOfFile()
        handle.write(Data("C 1001 52:54:00:77:00:03 10.0.0.3 90".utf8))
        handle.closeFile()

        let again = try open(dir)
        #expect(again.loaded.tornBytes > 0)
        #expect(again.loaded.records.count == 2)
        #expect(again.holder(of: IPv4Address(10, 0, 0, 3), at: dhcpTime(1002)) == nil)
        try again.apply(.commit(lease(4, IPv4Address(10, 0, 0, 4), until: 9000)), at: dhcpTime(1002))
        again.close()

        let third = try open(dir)
        defer { third.close() }
        #expect(third.loaded.tornBytes == 0 && third.loaded.corruptLines == 0, "the torn bytes were cut, not glued to")
        #expect(third.leases(at: dhcpTime(1003)).map(\.mac) == [dhcpMAC(1), dhcpMAC(2), dhcpMAC(4)])
    }

    @Test("a damaged line in the middle fails its checksum and is skipped, the rest loads")
    func corruptLine() throws {
        let dir = try DHCPTemporaryDirectory()
        defer { dir.cleanup() }
        let store = try open(dir)
        for n in 1...3 { try store.apply(.commit(lease(n, IPv4Address(10, 0, 0, UInt8(n)), until: 9000)), at: dhcpTime(1000)) }
        store.close()
        var text = try String(contentsOfFile: store.journalPath, encoding: .utf8)
        text = text.replacingOccurrences(of: "10.0.0.2 9000", with: "10.0.0.9 9000")
        try text.write(toFile: store.journalPath, atomically: true, encoding: .utf8)
        let again = try open(dir)
        defer { again.close() }
        #expect(again.loaded.corruptLines == 1)
        #expect(again.leases(at: dhcpTime(1001)).map(\.address) == [IPv4Address(10, 0, 0, 1), IPv4Address(10, 0, 0, 3)])
    }

    @Test("randomised workload through the policy with restarts: no address ever held by two clients")
    func invariantUnderRandomWorkload() throws {
        let dir = try DHCPTemporaryDirectory()
        defer { dir.cleanup() }
        var generator = SplitMix64(seed: 0xD4C9)
        let pool = IPv4Address(10, 9, 0, 10)...IPv4Address(10, 9, 0, 49)  // 40 addresses for 60 clients
        let fixed = (0..<5).map { DHCPHost(mac: dhcpMAC(100 + $0), address: IPv4Address(10, 9, 0, UInt8(200 + $0)), hostname: "fixed\($0)") }
        let inventory = DHCPStaticInventory(hosts: fixed, subnets: [DHCPSubnet(
            network: IPv4Network("10.9.0.0/24")!, leaseTime: 120, pool: pool)])
        let server = IPv4Address(10, 9, 0, 1)
        let policy = DHCPPolicy(serverAddress: server, rapidCommit: false, offerHoldTime: 10, declineHoldTime: 60,
                                bootScriptPath: BootPlan.bootScriptPath)
        let clients = (0..<60).map(dhcpMAC) + fixed.map(\.mac)
        var store = try open(dir) { $0.compactAfterRecords = 64 }
        var t: Int64 = 100_000
        var acks = 0, restarts = 0

        for step in 0..<6000 {
            t += Int64(generator.next() % 3)
            let mac = clients[Int(generator.next() % UInt64(clients.count))]
            var message = DHCPMessage(op: .bootRequest, xid: UInt32(step), chaddr: DHCPHardwareAddress(mac))
            let held = store.address(heldBy: mac, at: dhcpTime(t))
            switch generator.next() % 10 {
            case 0...3:
                message.options.set(.messageType(.discover))
            case 4...6:
                message.options.set(.messageType(.request))
                message.options.set(.serverIdentifier(server))
                // Mostly the held/offered address, sometimes a random pool address (a confused client).
                let wanted = held.flatMap { generator.next() % 4 == 0 ? nil : $0 }
                    ?? pool.lowerBound.advanced(by: Int(generator.next() % 40))
                message.options.set(.requestedIPAddress(wanted))
            case 7:
                message.options.set(.messageType(.request))  // renewing
                message.ciaddr = held ?? pool.lowerBound.advanced(by: Int(generator.next() % 40))
            case 8:
                message.options.set(.messageType(.release))
                message.options.set(.serverIdentifier(server))
                message.ciaddr = held ?? pool.lowerBound
            default:
                if generator.next() % 4 == 0, let held {
                    message.options.set(.messageType(.decline))
                    message.options.set(.serverIdentifier(server))
                    message.options.set(.requestedIPAddress(held))
                } else {
                    message.options.set(.messageType(.discover))
                }
            }
            let decision = policy.decide(DHCPReceived(message: message, interfaceAddress: server), now: dhcpTime(t),
                                         inventory: inventory, leases: store)
            let action: DHCPLeaseAction?
            switch decision {
            case .reply(let reply): action = reply.leaseAction
            case .record(let a): action = a
            case .ignore: action = nil
            }
            if let action {
                if case .commit(let lease) = action {
                    if let holder = store.holder(of: lease.address, at: dhcpTime(t)) {
                        #expect(holder == mac, "step \(step): ACK of \(lease.address) to \(mac) while \(holder) holds it")
                    }
                    acks += 1
                }
                try store.apply(action, at: dhcpTime(t))
            }
            // Injectivity of the live view: every held address maps back to one client.
            if step % 250 == 0 {
                var seen: [IPv4Address: MACAddress] = [:]
                for client in clients {
                    guard let address = store.address(heldBy: client, at: dhcpTime(t)) else { continue }
                    #expect(seen[address] == nil, "step \(step): \(address) held by \(seen[address]!) and \(client)")
                    seen[address] = client
                }
            }
            if generator.next() % 500 == 0 {
                // Restart: bound leases must come back exactly.
                let before = store.leases(at: dhcpTime(t))
                store.close()
                store = try open(dir) { $0.compactAfterRecords = 64 }
                #expect(store.leases(at: dhcpTime(t)) == before, "step \(step): restart changed the leases")
                restarts += 1
            }
        }
        store.close()
        #expect(acks > 500 && restarts > 3, "the workload did something: \(acks) ACKs, \(restarts) restarts")
        #expect(store.statistics.compactions > 0)
        // And over the whole journal as written (compactions included): no commit overlapped another holder.
        let contents = try LeaseJournalContents.read(path: store.journalPath)
        #expect(leaseJournalViolation(contents.records) == nil)
    }

    @Test("the journal audit finds an overlapping commit")
    func auditFindsViolation() {
        let a = IPv4Address(10, 0, 0, 1)
        let records = [
            LeaseRecord(kind: .commit, time: dhcpTime(100), mac: dhcpMAC(1), address: a, expires: dhcpTime(200)),
            LeaseRecord(kind: .commit, time: dhcpTime(150), mac: dhcpMAC(2), address: a, expires: dhcpTime(250)),
        ]
        #expect(leaseJournalViolation(records) != nil)
        #expect(leaseJournalViolation([records[0], LeaseRecord(kind: .commit, time: dhcpTime(200), mac: dhcpMAC(2), address: a,
                                                               expires: dhcpTime(300))]) == nil, "after expiry it is free")
    }
}

/// Deterministic PRNG so a failing random workload can be replayed.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE5_E4B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
