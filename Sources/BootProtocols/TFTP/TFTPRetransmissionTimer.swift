import NIOCore

/// RFC 6298 retransmission time-out estimator, one per transfer.
///
/// Fed only with samples from blocks sent once (Karn's rule, enforced by the caller), so a
/// retransmitted block's ACK never shrinks the time-out. Back-off doubles the time-out on each
/// consecutive time-out and persists until a fresh sample arrives.
public struct TFTPRetransmissionTimer: Sendable, Hashable {
    public private(set) var smoothedRoundTripTime: TimeAmount?
    public private(set) var roundTripTimeVariation: TimeAmount = .zero
    /// The time-out to use for the next transmission, already clamped and backed off.
    public private(set) var timeout: TimeAmount
    public let minimum: TimeAmount
    public let maximum: TimeAmount

    /// Clock granularity G of RFC 6298 §2; NIO deadlines are nanoseconds but scheduling is ~1 ms.
    private static let granularity: TimeAmount = .milliseconds(1)

    /// A `minimum` below the clock granularity is raised to it: a zero time-out would arm a timer that is
    /// already due, and a session would retransmit in a busy loop.
    public init(initial: TimeAmount, minimum: TimeAmount, maximum: TimeAmount) {
        let minimum = max(minimum, Self.granularity)
        self.minimum = minimum
        self.maximum = max(minimum, maximum)
        self.timeout = Self.clamp(initial, minimum, max(minimum, maximum))
    }

    /// Adds one round-trip sample (RFC 6298 §2.2/2.3) and recomputes the time-out, ending any back-off.
    public mutating func addSample(_ rtt: TimeAmount) {
        let sample = max(rtt, .zero)
        if let srtt = smoothedRoundTripTime {
            let deviation = srtt > sample ? srtt - sample : sample - srtt
            roundTripTimeVariation = .nanoseconds((3 * roundTripTimeVariation.nanoseconds + deviation.nanoseconds) / 4)
            smoothedRoundTripTime = .nanoseconds((7 * srtt.nanoseconds + sample.nanoseconds) / 8)
        } else {
            smoothedRoundTripTime = sample
            roundTripTimeVariation = .nanoseconds(sample.nanoseconds / 2)
        }
        let srtt = smoothedRoundTripTime!
        let variance = TimeAmount.nanoseconds(max(Self.granularity.nanoseconds, 4 * roundTripTimeVariation.nanoseconds))
        timeout = Self.clamp(srtt + variance, minimum, maximum)
    }

    /// Doubles the time-out after a time-out (RFC 6298 §5.5), up to the maximum.
    public mutating func backOff() {
        let doubled = timeout.nanoseconds > Int64.max / 2 ? Int64.max : timeout.nanoseconds * 2
        timeout = Self.clamp(.nanoseconds(doubled), minimum, maximum)
    }

    private static func clamp(_ value: TimeAmount, _ low: TimeAmount, _ high: TimeAmount) -> TimeAmount {
        min(max(value, low), high)
    }
}
