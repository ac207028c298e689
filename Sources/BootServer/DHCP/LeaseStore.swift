import BootProtocols
import Foundation
import Logging
import Synchronization

/// Settings of the lease store.
public struct LeaseStoreConfiguration: Sendable {
    /// Directory for the journal (`dhcp-leases.journal`); created when missing.
    public var directory: String
    public var fileName = "dhcp-leases.journal"
    /// Compact once this many records were appended since the last compaction and they outnumber
    /// the live leases twice over.
    public var compactAfterRecords = 4096
    /// Called on the journal thread before each sync with the number of records in the batch. A seam
    /// for tests (holding a sync open to see batching) and fault injection; nil in production.
    public var beforeSync: (@Sendable (Int) -> Void)?
    /// A copy of the bound leases other threads may read (who may report a node's stages); nil: none.
    public var index: BoundLeaseIndex?

    public init(directory: String) { self.directory = directory }
}

/// Which address each MAC holds a bound lease on, readable from any thread.
///
/// The store itself belongs to the DHCP event loop; the HTTP service asks "does this MAC hold this
/// address now?" for every stage report. The store keeps this copy in step in `replay`, the one place
/// bindings change (live commits, releases, declines, and the journal at start), so it costs one short
/// lock per journaled record and nothing per packet.
public final class BoundLeaseIndex: Sendable {
    private struct Tables {
        var byMAC: [MACAddress: (address: IPv4Address, expires: DHCPTimestamp)] = [:]
        var byAddress: [IPv4Address: MACAddress] = [:]
    }
    private let tables = Mutex(Tables())

    public init() {}

    /// The address `mac` holds a bound, unexpired lease on at `now`.
    public func address(of mac: MACAddress, at now: DHCPTimestamp = .current) -> IPv4Address? {
        tables.withLock { $0.byMAC[mac] }.flatMap { $0.expires > now ? $0.address : nil }
    }

    /// The MAC holding a bound, unexpired lease on `address` at `now`.
    public func mac(at address: IPv4Address, now: DHCPTimestamp = .current) -> MACAddress? {
        tables.withLock { tables in
            tables.byAddress[address].flatMap { mac in tables.byMAC[mac].flatMap { $0.expires > now ? mac : nil } }
        }
    }

    func bind(_ mac: MACAddress, _ address: IPv4Address, until expires: DHCPTimestamp) {
        tables.withLock { tables in
            if let previous = tables.byMAC[mac]?.address, previous != address, tables.byAddress[previous] == mac {
                tables.byAddress[previous] = nil
            }
            tables.byMAC[mac] = (address, expires)
            tables.byAddress[address] = mac
        }
    }

    func unbind(_ mac: MACAddress, _ address: IPv4Address) {
        tables.withLock { tables in
            if tables.byMAC[mac]?.address == address { tables.byMAC[mac] = nil }
            if tables.byAddress[address] == mac { tables.byAddress[address] = nil }
        }
    }
}

extension DHCPTimestamp {
    /// Now, from the wall clock (leases expire by it).
    public static var current: DHCPTimestamp { DHCPTimestamp(secondsSinceEpoch: Int64(time(nil))) }
}

/// Leases that survive crashes, as the reply policy sees them (`DHCPLeaseView`).
///
/// Bound leases live in memory and in an append-only journal; offers live in memory only (a client
/// whose offer is lost asks again). A commit takes effect in memory at once, so the next decision
/// already sees the address as taken, and the caller sends the ACK only from `onDurable`, after the
/// journal's fsync: an ACK never names an address that a restart could forget.
///
/// Not thread-safe: one owner (the DHCP server's event loop) calls everything; only `onDurable`
/// completions run on the journal thread.
public final class LeaseStore: DHCPLeaseView {
    public let configuration: LeaseStoreConfiguration
    private let logger: Logger
    private let journal: LeaseJournal

    private struct Binding {
        var lease: DHCPLease
        /// When it was granted (kept through compaction for the journal's reference times).
        var since: DHCPTimestamp
    }

    private var bound: [IPv4Address: Binding] = [:]
    private var boundByMAC: [MACAddress: IPv4Address] = [:]
    private var offers: [IPv4Address: DHCPLease] = [:]
    private var offersByMAC: [MACAddress: IPv4Address] = [:]
    private var declined: [IPv4Address: (mac: MACAddress, since: DHCPTimestamp, until: DHCPTimestamp)] = [:]
    /// Where the next pool search starts, per pool: keeps allocation O(1) amortised instead of
    /// walking every taken address from the bottom of the pool each time.
    private var cursors: [IPv4Address: IPv4Address] = [:]
    private var recordsSinceCompaction = 0

    /// What loading found (for the start-up log).
    public let loaded: LeaseJournalContents

    /// Loads the journal (skipping a torn last record) and opens it for appending.
    public init(configuration: LeaseStoreConfiguration, logger: Logger) throws(LeaseStoreError) {
        self.configuration = configuration
        self.logger = logger
        let path = configuration.directory + "/" + configuration.fileName
        let contents = try LeaseJournalContents.read(path: path)
        loaded = contents
        journal = try LeaseJournal(
            directory: configuration.directory, fileName: configuration.fileName,
            validLength: contents.validLength, logger: logger, beforeSync: configuration.beforeSync)
        for record in contents.records { replay(record) }
        recordsSinceCompaction = contents.records.count
        if contents.tornBytes > 0 || contents.corruptLines > 0 {
            logger.warning("lease journal had damaged records; they were skipped", metadata: [
                "file": "\(path)", "torn_bytes": "\(contents.tornBytes)", "corrupt_lines": "\(contents.corruptLines)",
            ])
        }
    }

    /// Writes what is queued and stops the journal thread; the store must not be used afterwards.
    public func close() { journal.shutdown() }

    public var journalPath: String { journal.path }
    public var statistics: LeaseJournalStatistics { journal.statistics }
    /// Bound leases in memory (expired ones included until the next compaction).
    public var boundCount: Int { bound.count }

    // MARK: DHCPLeaseView

    public func holder(of address: IPv4Address, at now: DHCPTimestamp) -> MACAddress? {
        if let binding = bound[address], binding.lease.expires > now { return binding.lease.mac }
        if let offer = offers[address], offer.expires > now { return offer.mac }
        return nil
    }

    public func address(heldBy client: MACAddress, at now: DHCPTimestamp) -> IPv4Address? {
        if let address = boundByMAC[client], let binding = bound[address], binding.lease.mac == client,
           binding.lease.expires > now { return address }
        if let address = offersByMAC[client], let offer = offers[address], offer.mac == client, offer.expires > now {
            return address
        }
        return nil
    }

    public func isDeclined(_ address: IPv4Address, at now: DHCPTimestamp) -> Bool {
        if let entry = declined[address] { return entry.until > now }
        return false
    }

    public func firstAvailableAddress(
        in pool: ClosedRange<IPv4Address>, at now: DHCPTimestamp, where usable: (IPv4Address) -> Bool
    ) -> IPv4Address? {
        let size = Int(pool.upperBound.rawValue - pool.lowerBound.rawValue) + 1
        var candidate = cursors[pool.lowerBound] ?? pool.lowerBound
        if !pool.contains(candidate) { candidate = pool.lowerBound }
        for _ in 0..<size {
            if holder(of: candidate, at: now) == nil && !isDeclined(candidate, at: now) && usable(candidate) {
                cursors[pool.lowerBound] = candidate == pool.upperBound ? pool.lowerBound : candidate.advanced(by: 1)
                return candidate
            }
            candidate = candidate == pool.upperBound ? pool.lowerBound : candidate.advanced(by: 1)
        }
        return nil
    }

    // MARK: Changes

    /// Every live bound lease (unexpired at `now`), sorted by address.
    public func leases(at now: DHCPTimestamp) -> [DHCPLease] {
        bound.values.map(\.lease).filter { $0.expires > now }.sorted { $0.address < $1.address }
    }

    /// Carries out a policy lease action. Offers change memory only and `onDurable` runs at once;
    /// commits, releases and declines are journaled and `onDurable` runs on the journal thread after
    /// the fsync that covers them. Throws, changing nothing, when a commit would give an address that
    /// another client holds: the policy should never ask that, and the store refuses regardless.
    public func apply(
        _ action: DHCPLeaseAction, at now: DHCPTimestamp,
        onDurable: (@Sendable (Result<Void, LeaseStoreError>) -> Void)? = nil
    ) throws(LeaseStoreError) {
        switch action {
        case .offer(let lease):
            try checkFree(lease.address, for: lease.mac, at: now)
            removeOffer(of: lease.mac)
            // An expired offer of another client for this address goes with it.
            if let previous = offers[lease.address], offersByMAC[previous.mac] == lease.address {
                offersByMAC[previous.mac] = nil
            }
            offers[lease.address] = lease
            offersByMAC[lease.mac] = lease.address
            onDurable?(.success(()))
            return
        case .commit(let lease):
            try checkFree(lease.address, for: lease.mac, at: now)
            let record = LeaseRecord(kind: .commit, time: now, mac: lease.mac, address: lease.address,
                                     expires: lease.expires, hostname: lease.hostname)
            replay(record)
            journal.append(record, completion: onDurable)
        case .release(let mac, let address):
            let record = LeaseRecord(kind: .release, time: now, mac: mac, address: address)
            replay(record)
            journal.append(record, completion: onDurable)
        case .decline(let mac, let address, let until):
            let record = LeaseRecord(kind: .decline, time: now, mac: mac, address: address, expires: until)
            replay(record)
            journal.append(record, completion: onDurable)
        }
        recordsSinceCompaction += 1
        compactIfNeeded(at: now)
    }

    private func checkFree(_ address: IPv4Address, for mac: MACAddress, at now: DHCPTimestamp) throws(LeaseStoreError) {
        if let holder = holder(of: address, at: now), holder != mac {
            throw .addressHeldByAnother(address, holder: holder, requester: mac)
        }
    }

    /// Applies a record to memory: the same code path for live changes and for loading the journal.
    private func replay(_ record: LeaseRecord) {
        switch record.kind {
        case .commit:
            removeOffer(of: record.mac)
            if let previous = boundByMAC[record.mac], previous != record.address { bound[previous] = nil }
            if let other = bound[record.address], other.lease.mac != record.mac { boundByMAC[other.lease.mac] = nil }
            if let other = bound[record.address], other.lease.mac != record.mac {
                configuration.index?.unbind(other.lease.mac, record.address)
            }
            bound[record.address] = Binding(
                lease: DHCPLease(mac: record.mac, address: record.address, expires: record.expires, hostname: record.hostname),
                since: record.time)
            boundByMAC[record.mac] = record.address
            configuration.index?.bind(record.mac, record.address, until: record.expires)
        case .release:
            if let binding = bound[record.address], binding.lease.mac == record.mac {
                bound[record.address] = nil
                boundByMAC[record.mac] = nil
                configuration.index?.unbind(record.mac, record.address)
            }
        case .decline:
            // Only the client's own binding goes; a DECLINE never takes an address from another client.
            if let binding = bound[record.address], binding.lease.mac == record.mac {
                bound[record.address] = nil
                boundByMAC[record.mac] = nil
                configuration.index?.unbind(record.mac, record.address)
            }
            if offers[record.address]?.mac == record.mac { removeOffer(of: record.mac) }
            declined[record.address] = (record.mac, record.time, record.expires)
        }
    }

    private func removeOffer(of mac: MACAddress) {
        if let address = offersByMAC.removeValue(forKey: mac), offers[address]?.mac == mac { offers[address] = nil }
    }

    /// Drops expired state from memory and rewrites the journal as the live set, when it has grown
    /// well past it. The snapshot is taken here, on the owner's thread; the journal thread writes it
    /// after every record queued before it, so nothing is lost between the two.
    private func compactIfNeeded(at now: DHCPTimestamp) {
        guard recordsSinceCompaction >= configuration.compactAfterRecords,
              recordsSinceCompaction > 2 * bound.count else { return }
        compact(at: now)
    }

    /// Compacts now (tests; `compactIfNeeded` otherwise).
    public func compact(at now: DHCPTimestamp) {
        for (address, binding) in bound where binding.lease.expires <= now {
            bound[address] = nil
            if boundByMAC[binding.lease.mac] == address { boundByMAC[binding.lease.mac] = nil }
            configuration.index?.unbind(binding.lease.mac, address)
        }
        for (address, offer) in offers where offer.expires <= now {
            offers[address] = nil
            if offersByMAC[offer.mac] == address { offersByMAC[offer.mac] = nil }
        }
        for (address, entry) in declined where entry.until <= now { declined[address] = nil }
        var records: [LeaseRecord] = []
        records.reserveCapacity(bound.count + declined.count)
        for (address, entry) in declined.sorted(by: { $0.key < $1.key }) {
            records.append(LeaseRecord(kind: .decline, time: entry.since, mac: entry.mac, address: address, expires: entry.until))
        }
        for (address, binding) in bound.sorted(by: { $0.key < $1.key }) {
            records.append(LeaseRecord(kind: .commit, time: binding.since, mac: binding.lease.mac, address: address,
                                       expires: binding.lease.expires, hostname: binding.lease.hostname))
        }
        journal.compact(records)
        recordsSinceCompaction = records.count
        logger.debug("lease journal compaction queued", metadata: ["records": "\(records.count)"])
    }
}

/// Checks a journal's history: at no record did two clients hold one address. Returns the first
/// violation found, or nil. Used by the crash tests and handy for auditing a server's state directory.
public func leaseJournalViolation(_ records: [LeaseRecord]) -> String? {
    var holders: [IPv4Address: (mac: MACAddress, expires: DHCPTimestamp)] = [:]
    var addressOf: [MACAddress: IPv4Address] = [:]
    for (index, record) in records.enumerated() {
        switch record.kind {
        case .commit:
            if let holder = holders[record.address], holder.mac != record.mac, holder.expires > record.time {
                return "record \(index) (\(record)): \(record.address) is still held by \(holder.mac) until \(holder.expires)"
            }
            if let previous = addressOf[record.mac], previous != record.address, holders[previous]?.mac == record.mac {
                holders[previous] = nil
            }
            holders[record.address] = (record.mac, record.expires)
            addressOf[record.mac] = record.address
        case .release:
            if holders[record.address]?.mac == record.mac { holders[record.address] = nil }
        case .decline:
            if holders[record.address]?.mac == record.mac { holders[record.address] = nil }
        }
    }
    return nil
}
