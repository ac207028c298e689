import BootProtocols
import Foundation
import Metrics
import NIOCore

/// Settings of the DHCP service. Network facts (server address, subnet, pool, lease time, boot
/// files) come from the inventory; this holds how the server runs.
public struct DHCPServerConfiguration: Sendable {
    /// How a reply reaches a client that has no address yet and did not ask for a broadcast.
    public enum UnicastDelivery: String, Sendable {
        /// Add an ARP entry for (yiaddr, chaddr) on the receiving interface (ioctl SIOCSARP, as
        /// dnsmasq does), then send by unicast. Falls back to broadcast when that fails.
        case arpInjection
        /// Always broadcast such replies (RFC 2131 allows it; costs every host on the segment a wake-up).
        case broadcast
    }

    /// `authoritative` hands out addresses; `proxy` (proxyDHCP) only boot information, next to another server.
    public var mode: DHCPPolicy.Mode = .authoritative
    /// DHCP server port (67); tests may use another.
    public var port: Int = 67
    /// PXE boot server port, bound only in proxy mode.
    public var pxePort: Int = 4011
    /// Interfaces to serve, one socket each bound with SO_BINDTODEVICE: replies (broadcasts above all)
    /// leave by the interface the request came in on, and the interface's address picks the subnet.
    /// Empty: one socket for all interfaces, with IP_PKTINFO telling the receiving interface; broadcasts
    /// then follow the routing table, so on a multi-homed host name the interfaces.
    public var interfaces: [String] = []
    /// Serve the interface that holds this address (added to `interfaces`); the `--listen` of `serve`.
    public var listenAddress: String?
    /// Directory of the lease journal.
    public var stateDirectory: String
    public var unicastDelivery: UnicastDelivery = .arpInjection
    /// Per-MAC token bucket against storms from one client: `rateLimitBurst` packets at once, refilled
    /// at `rateLimitPerSecond`. A PXE boot (firmware, iPXE, OS) sends about ten packets in all.
    public var rateLimitBurst: Double = 20
    public var rateLimitPerSecond: Double = 5
    /// SO_RCVBUF of each socket; a boot storm queues hundreds of DISCOVERs at once.
    public var receiveBufferSize = 4 << 20
    public var ignoreUnknownClients = false
    /// Answer DISCOVER with option 80 by an immediate ACK (RFC 4039).
    public var rapidCommit = true
    public var offerHoldTime: UInt32 = 60
    public var declineHoldTime: UInt32 = 3600
    /// Seconds before pxelinux resets a node it failed to boot (`DHCPPolicy.pxelinuxRebootTime`); nil
    /// leaves pxelinux's 300 s.
    public var pxelinuxRebootTime: UInt32? = 30
    /// Lease journal compaction threshold (records appended since the last one).
    public var compactAfterRecords = 4096

    public init(stateDirectory: String, mode: DHCPPolicy.Mode = .authoritative, interfaces: [String] = [], port: Int = 67) {
        self.stateDirectory = stateDirectory
        self.mode = mode
        self.interfaces = interfaces
        self.port = port
    }
}

/// What happened to one received packet, for the boot timeline and the log.
public enum DHCPOutcome: Sendable, Hashable, CustomStringConvertible {
    /// A reply went out (OFFER, ACK, NAK); for an ACK that binds, after the journal sync.
    case replied(DHCPMessageType, DHCPDestination)
    /// Nothing to send, state recorded (RELEASE, DECLINE).
    case recorded(DHCPLeaseAction)
    case ignored(DHCPIgnoreReason)
    /// Dropped before the policy: too many packets from this MAC.
    case rateLimited
    /// The packet did not decode.
    case malformed(DHCPError)
    /// The policy answered but the server could not (journal failure, store refusal, encoding).
    case failed(String)

    public var description: String {
        switch self {
        case .replied(let type, let destination): "sent \(type) to \(destination)"
        case .recorded(let action): "recorded \(action)"
        case .ignored(let reason): "ignored: \(reason)"
        case .rateLimited: "dropped: rate limit for this MAC"
        case .malformed(let error): "dropped: \(error)"
        case .failed(let reason): "failed: \(reason)"
        }
    }
}

/// One decision, handed to the observer (boot timeline) on the server's event loop: keep it short.
public struct DHCPEvent: Sendable, Hashable {
    /// nil only for packets too malformed to carry a MAC.
    public var mac: MACAddress?
    /// The received message type (nil when absent or undecodable).
    public var messageType: DHCPMessageType?
    /// The address offered or bound (yiaddr), if any.
    public var address: IPv4Address?
    public var outcome: DHCPOutcome
    /// Interface the packet arrived on, when known.
    public var interface: String?
}

/// Why the server could not start.
public enum DHCPServerError: Error, CustomStringConvertible {
    case alreadyRunning
    case noInterfaceHolds(String)
    case unknownInterface(String)
    case socket(String, interface: String?, port: Int, errno: Int32)
    case leaseStore(LeaseStoreError)

    public var description: String {
        switch self {
        case .alreadyRunning: "DHCP server is already running"
        case .noInterfaceHolds(let address): "no network interface holds the listen address \(address)"
        case .unknownInterface(let name): "no network interface named '\(name)'"
        case .socket(let operation, let interface, let port, let code):
            "DHCP socket on \(interface ?? "all interfaces") port \(port): \(operation) failed: \(String(cString: strerror(code)))"
                + (code == EACCES ? " (binding port \(port) needs root or CAP_NET_BIND_SERVICE)" : "")
        case .leaseStore(let error): "\(error)"
        }
    }
}

/// Totals since start, read with `DHCPServer.statistics()`.
public struct DHCPServerStatistics: Sendable, Hashable {
    public var received: UInt64 = 0
    public var sent: UInt64 = 0
    public var ignored: UInt64 = 0
    public var malformed: UInt64 = 0
    public var rateLimited: UInt64 = 0
    public var failed: UInt64 = 0
    public var leasesCommitted: UInt64 = 0
    public var arpEntriesInjected: UInt64 = 0
    public var journal = LeaseJournalStatistics()
    public var inventoryGeneration = 0
    public init() {}
}

/// swift-metrics instruments, created once: a Counter lookup per packet would cost more than the packet.
final class DHCPServerMetrics {
    private let receivedByType: [Counter]
    private let sentByType: [Counter]
    private let receivedOther = Counter(label: "imagebuild_dhcp_messages_received_total", dimensions: [("type", "none")])
    private var ignoredByReason: [String: Counter] = [:]
    let leasesCommitted = Counter(label: "imagebuild_dhcp_leases_total", dimensions: [("action", "commit")])
    let leasesOffered = Counter(label: "imagebuild_dhcp_leases_total", dimensions: [("action", "offer")])
    let leasesReleased = Counter(label: "imagebuild_dhcp_leases_total", dimensions: [("action", "release")])
    let leasesDeclined = Counter(label: "imagebuild_dhcp_leases_total", dimensions: [("action", "decline")])
    let boundLeases = Gauge(label: "imagebuild_dhcp_leases_bound")
    let journalFailures = Counter(label: "imagebuild_dhcp_journal_failures_total")

    init() {
        let types = (1...18).compactMap { DHCPMessageType(rawValue: UInt8($0)) }
        receivedByType = types.map { Counter(label: "imagebuild_dhcp_messages_received_total", dimensions: [("type", $0.description)]) }
        sentByType = types.map { Counter(label: "imagebuild_dhcp_messages_sent_total", dimensions: [("type", $0.description)]) }
    }

    func received(_ type: DHCPMessageType?) {
        guard let type, Int(type.rawValue) - 1 < receivedByType.count else { receivedOther.increment(); return }
        receivedByType[Int(type.rawValue) - 1].increment()
    }

    func sent(_ type: DHCPMessageType) {
        guard Int(type.rawValue) - 1 < sentByType.count else { return }
        sentByType[Int(type.rawValue) - 1].increment()
    }

    func ignored(_ reason: String) {
        if let counter = ignoredByReason[reason] { counter.increment(); return }
        let counter = Counter(label: "imagebuild_dhcp_messages_ignored_total", dimensions: [("reason", reason)])
        ignoredByReason[reason] = counter
        counter.increment()
    }
}

extension DHCPIgnoreReason {
    /// Short, bounded label for the metrics dimension (the description carries the details).
    var metricLabel: String {
        switch self {
        case .notABootRequest: "not_a_boot_request"
        case .unsupportedHardware: "unsupported_hardware"
        case .noMessageType: "no_message_type"
        case .notAClientMessage: "not_a_client_message"
        case .notPXEClient: "not_pxe_client"
        case .unknownClientIgnored: "unknown_client"
        case .unknownClientNoPool: "unknown_client_no_pool"
        case .requestForOtherServer: "other_server"
        case .noSubnet: "no_subnet"
        case .fixedAddressOutsideSubnet: "fixed_address_outside_subnet"
        case .addressHeldByAnother: "address_held_by_another"
        case .addressDeclined: "address_declined"
        case .poolExhausted: "pool_exhausted"
        case .noBootFile: "no_boot_file"
        case .noRecordOfClient: "no_record_of_client"
        case .missingAddress: "missing_address"
        case .releaseOfAddressNotHeld: "release_not_held"
        case .declineOfAddressNotOffered: "decline_not_offered"
        case .proxyLeavesAddressingToMainServer: "proxy_mode"
        case .notServedOnPort: "wrong_port"
        }
    }
}
