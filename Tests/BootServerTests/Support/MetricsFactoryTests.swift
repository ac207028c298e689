@testable import BootServer
import Foundation
import Metrics
import Prometheus
import Testing

@Suite("metrics: one registry, every name with the imagebuild_ prefix and a HELP line")
struct MetricsFactoryTests {
    @Test func swiftMetricsCountersGetTheirHelp() {
        let registry = PrometheusCollectorRegistry()
        let factory = BootServerMetricsFactory(registry: registry)
        for name in BootServerMetricsFactory.helpTexts.keys {
            if name == "imagebuild_dhcp_leases_bound" {
                (factory.makeMeter(label: name, dimensions: []) as? Prometheus.Gauge)?.set(1.0)
            } else {
                (factory.makeCounter(label: name, dimensions: [("kind", "x")]) as? Prometheus.Counter)?.increment()
            }
        }
        var bytes: [UInt8] = []
        registry.emit(into: &bytes)
        let text = String(decoding: bytes, as: UTF8.self)
        for (name, help) in BootServerMetricsFactory.helpTexts {
            #expect(text.contains("# HELP \(name) \(help)\n"), "\(name)")
        }
    }

    /// Every swift-metrics name the DHCP and TFTP services use is in the help table (a new counter
    /// without a HELP line, or without the prefix, fails here).
    @Test func everyServiceMetricIsInTheTable() throws {
        let sources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Sources/BootServer")
        var names = Set<String>()
        for file in ["DHCP/DHCPServerTypes.swift", "TFTP/TFTPServerTypes.swift"] {
            let text = try String(contentsOf: sources.appendingPathComponent(file), encoding: .utf8)
            for match in text.matches(of: /(?:Counter|Gauge|Recorder|Timer)\(label: "([^"]+)"/) { names.insert(String(match.1)) }
        }
        #expect(names.count >= 10)
        for name in names {
            #expect(name.hasPrefix("imagebuild_"), "\(name)")
            #expect(BootServerMetricsFactory.helpTexts[name] != nil, "\(name) has no HELP text")
        }
    }
}
