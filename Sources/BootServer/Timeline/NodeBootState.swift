import BootProtocols
import Foundation

/// A node's boot as derived from its events. Pure: the same events always give the same state, so the
/// live timeline and a replay of the journal after a restart agree, and tests need no server.
public struct NodeBootState: Sendable, Hashable {
    public let mac: MACAddress
    public private(set) var stage: BootStage = .unseen
    /// When the node entered `stage`.
    public private(set) var stageSince: Date?
    public private(set) var lastSeen: Date?
    /// The node's current boot (see `BootEvent.boot`); 0 before any event.
    public private(set) var boot = 0
    /// First event of the current boot (normally the firmware's DHCPDISCOVER).
    public private(set) var bootStarted: Date?
    /// Where the node's secrets window starts (`SecretAdmission`): the first event of the current boot,
    /// moved to each DHCP acknowledgement in it (stage 1's own DHCP comes right before it asks).
    public private(set) var secretWindowOpened: Date?
    /// When the current boot reached `up`.
    public private(set) var bootCompleted: Date?
    /// The furthest stage the current boot reached (a DHCP renewal in stage 1 does not undo the kernel).
    public private(set) var furthest: BootStage = .unseen
    public private(set) var address: IPv4Address?
    public private(set) var lastDHCPStep: DHCPStep?
    /// The image the last boot script named.
    public private(set) var image: String?
    /// What the node said when it failed.
    public private(set) var failure: String?
    /// The last event. Kept as it came and put into words when read (`lastEvent`): every boot
    /// records some twenty events, and the status page reads the line of a node that changed.
    public private(set) var lastObservation: BootObservation?
    /// The last event, in one line.
    public var lastEvent: String? { lastObservation?.summary }

    public init(mac: MACAddress) { self.mac = mac }

    /// Which boot an observation belongs to: the next one when the node was up or had failed (or was
    /// never seen) and this is how a boot begins; DHCP renewals of a running node stay in its boot.
    public func boot(for observation: BootObservation) -> Int {
        if stage == .unseen { return boot + 1 }
        guard stage == .up || stage == .failed else { return boot }
        switch observation {
        case .dhcp(let step, _, _): return step == .discover ? boot + 1 : boot
        case .report: return boot
        default: return observation.stage?.beginsBoot == true ? boot + 1 : boot
        }
    }

    /// Applies one event (its `boot` decides whether a new boot starts).
    public mutating func apply(_ event: BootEvent) {
        if event.boot != boot {
            boot = event.boot
            bootStarted = event.time
            secretWindowOpened = event.time
            bootCompleted = nil
            furthest = .unseen
            failure = nil
            image = nil
        }
        lastSeen = max(lastSeen ?? event.time, event.time)
        lastObservation = event.observation
        // An observation that is no step of a boot (a manifest fetched) leaves the stage as it is.
        var next = event.observation.stage ?? stage
        switch event.observation {
        case .dhcp(let step, let offered, _):
            // A running node renewing its lease is still up.
            if stage == .up && step != .discover { next = .up }
            if step != .ignored && step != .release, let offered, !offered.isAny { address = offered }
            if step == .ack { secretWindowOpened = event.time }
            lastDHCPStep = step
        case .bootScript(let name, _):
            image = name
        case .report(let report, let detail):
            if report == .failed { failure = detail ?? "" }
        case .swarm:
            break
        case .transfer:
            // A transfer reported after the boot moved on (a lost final ACK is noticed only after a
            // client time-out) does not set the node back; a failed boot's retries still show.
            if next < furthest && furthest != .failed { next = stage }
        }
        if next != stage || stageSince == nil {
            stage = next
            stageSince = event.time
        }
        furthest = max(furthest, next)
        if next == .up && bootCompleted == nil { bootCompleted = event.time }
    }

    /// Seconds in the current stage at `now`.
    public func timeInStage(now: Date) -> TimeInterval? { stageSince.map { max(0, now.timeIntervalSince($0)) } }

    /// First event of the boot to `up`, for a boot that got there.
    public var bootDuration: TimeInterval? {
        guard let bootStarted, let bootCompleted else { return nil }
        return bootCompleted.timeIntervalSince(bootStarted)
    }

    /// True when the node has been in its stage longer than that stage normally takes, or failed.
    public func isStuck(now: Date) -> Bool {
        guard let limit = StuckHints.threshold(for: stage), let spent = timeInStage(now: now) else { return false }
        return stage == .failed || spent > limit
    }

    /// The hint for where this node is (nil when up or unseen).
    public var hint: String? {
        if stage == .dhcp, furthest >= .initrd, lastDHCPStep == .ack {
            // Stage 1's own DHCP: the lease came, the stage-1 report did not.
            return StuckHints.hint(stage: .initrd)
        }
        return StuckHints.hint(stage: stage, lastDHCPStep: lastDHCPStep)
    }
}
