import Metrics
import Prometheus

/// The swift-metrics factory `serve` bootstraps: the DHCP and TFTP services' counters land in the same
/// Prometheus registry as the HTTP service's, each with its HELP line.
///
/// Prometheus's own `PrometheusMetricsFactory` registers everything with an empty HELP (and its
/// registry refuses a second, different HELP for a name), so the factory looks each name up in
/// `helpTexts`, the one table of what the services count. Timers and aggregated recorders, which
/// nothing here makes, go to Prometheus's factory unchanged.
public struct BootServerMetricsFactory: MetricsFactory {
    public let registry: PrometheusCollectorRegistry
    private let fallback: PrometheusMetricsFactory

    public init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
        fallback = PrometheusMetricsFactory(registry: registry)
    }

    /// HELP for every metric the DHCP and TFTP services make through swift-metrics.
    static let helpTexts: [String: String] = [
        "imagebuild_dhcp_messages_received_total": "DHCP messages received, by message type",
        "imagebuild_dhcp_messages_sent_total": "DHCP replies sent, by message type",
        "imagebuild_dhcp_messages_ignored_total": "DHCP messages answered with nothing, by reason",
        "imagebuild_dhcp_leases_total": "Lease actions, by kind (offer, commit, release, decline)",
        "imagebuild_dhcp_leases_bound": "Leases bound now",
        "imagebuild_dhcp_journal_failures_total": "Lease journal writes that failed (the ACK was not sent)",
        "imagebuild_tftp_transfers_total": "TFTP transfers ended, by result",
        "imagebuild_tftp_bytes_sent_total": "TFTP file bytes sent (first transmissions)",
        "imagebuild_tftp_retransmissions_total": "TFTP packets sent again after a time-out",
        "imagebuild_tftp_timeouts_total": "TFTP retransmission time-outs",
    ]

    private func descriptor(_ label: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: label, unitName: "", helpText: Self.helpTexts[label] ?? "")
    }

    public func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        registry.makeCounter(descriptor: descriptor(label), labels: dimensions)
    }

    public func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler {
        registry.makeCounter(descriptor: descriptor(label), labels: dimensions)
    }

    public func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        guard !aggregate else { return fallback.makeRecorder(label: label, dimensions: dimensions, aggregate: true) }
        return registry.makeGauge(descriptor: descriptor(label), labels: dimensions)
    }

    public func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler {
        registry.makeGauge(descriptor: descriptor(label), labels: dimensions)
    }

    public func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
        fallback.makeTimer(label: label, dimensions: dimensions)
    }

    public func destroyCounter(_ handler: any CounterHandler) { fallback.destroyCounter(handler) }
    public func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) { fallback.destroyFloatingPointCounter(handler) }
    public func destroyRecorder(_ handler: any RecorderHandler) { fallback.destroyRecorder(handler) }
    public func destroyMeter(_ handler: any MeterHandler) { fallback.destroyMeter(handler) }
    public func destroyTimer(_ handler: any TimerHandler) { fallback.destroyTimer(handler) }
}
