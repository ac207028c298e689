import Hummingbird
import ImageBuildKit
import Prometheus

/// The HTTP service's metrics, made directly in the Prometheus registry `/metrics` renders. The TFTP and
/// DHCP services count through swift-metrics; when `serve` bootstraps `MetricsSystem` once with a
/// `PrometheusMetricsFactory` over this same registry, their counters appear on the same page.
/// Every metric is created up front: a lookup per request would cost more than the increment.
final class HTTPMetrics: Sendable {
    /// Route groups: a bounded label set, never the raw path.
    enum Route: String, CaseIterable, Sendable {
        case files, bootscript, secrets, cloudInit = "cloud-init", events, nodes, inventory, metrics, status, swarm, other
    }

    let registry: PrometheusCollectorRegistry
    private let requests: [Route: [Counter]]
    private let bytes: [Route: Counter]
    let downloadsCompleted: Counter
    let downloadsIncomplete: Counter
    let imageBytes: Counter
    /// Requests answered on the event loop without the router (small files, sendfile downloads, stage
    /// reports), also counted in `requests`.
    let fastPathResponses: Counter
    private let closedByTimeout: [ConnectionTimeoutReason: Counter]
    private let nodesByStage: [BootStage: Gauge]
    let unattributed: Gauge
    /// First event of a boot to its `up` report.
    let bootDuration: DurationHistogram
    let inventoryRejected: Gauge
    let inventoryUnpublished: Gauge
    let publishedGeneration: Gauge
    /// Tracker announces by outcome: `ok` or a `SwarmTracker.Reason`.
    let announces: [String: Counter]

    init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
        var requests: [Route: [Counter]] = [:]
        var bytes: [Route: Counter] = [:]
        for route in Route.allCases {
            requests[route] = (1...5).map {
                registry.makeCounter(descriptor: Self.name("imagebuild_http_requests_total", "HTTP requests answered, by route group and status class"), labels: [("route", route.rawValue), ("code", "\($0)xx")])
            }
            bytes[route] = registry.makeCounter(descriptor: Self.name("imagebuild_http_response_bytes_total", "HTTP response body bytes sent"), labels: [("route", route.rawValue)])
        }
        self.requests = requests
        self.bytes = bytes
        downloadsCompleted = registry.makeCounter(descriptor: Self.name("imagebuild_http_image_downloads_total", "Downloads of files under images/"), labels: [("outcome", "completed")])
        downloadsIncomplete = registry.makeCounter(descriptor: Self.name("imagebuild_http_image_downloads_total", "Downloads of files under images/"), labels: [("outcome", "incomplete")])
        imageBytes = registry.makeCounter(descriptor: Self.name("imagebuild_http_image_bytes_total", "Bytes of files under images/ sent"))
        fastPathResponses = registry.makeCounter(descriptor: Self.name("imagebuild_http_fast_path_responses_total", "Requests answered on the event loop, without the router (small files, downloads by sendfile, stage reports)"))
        var closed: [ConnectionTimeoutReason: Counter] = [:]
        for reason in ConnectionTimeoutReason.allCases {
            closed[reason] = registry.makeCounter(descriptor: Self.name("imagebuild_http_connections_timed_out_total", "Connections closed because the client stalled"), labels: [("reason", reason.rawValue)])
        }
        closedByTimeout = closed
        var stages: [BootStage: Gauge] = [:]
        for stage in BootStage.allCases {
            stages[stage] = registry.makeGauge(descriptor: Self.name("imagebuild_nodes", "Nodes by current boot stage"), labels: [("stage", stage.rawValue)])
        }
        nodesByStage = stages
        unattributed = registry.makeGauge(descriptor: Self.name("imagebuild_timeline_unattributed_events", "TFTP/HTTP requests from addresses no node is known at"))
        bootDuration = registry.makeDurationHistogram(
            descriptor: Self.name("imagebuild_boot_duration_seconds", "Boots that reached up: first DHCP or file of the boot to the node's up report"),
            labels: [], buckets: [10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200, 1800, 3600].map { Duration.seconds($0) })
        inventoryRejected = registry.makeGauge(descriptor: Self.name("imagebuild_inventory_rejected", "1 while the last change to nodes.yaml was rejected (the previous inventory is in force)"))
        inventoryUnpublished = registry.makeGauge(descriptor: Self.name("imagebuild_inventory_unpublished_changes", "Nodes and ranges of nodes.yaml that differ from the published generation (run imagebuild publish)"))
        publishedGeneration = registry.makeGauge(descriptor: Self.name("imagebuild_published_generation", "The generation the boot root serves (0: nothing published)"))
        var announces: [String: Counter] = [:]
        for outcome in ["ok"] + SwarmTracker.Reason.allCases.map(\.rawValue) {
            announces[outcome] = registry.makeCounter(descriptor: Self.name("imagebuild_swarm_announces_total", "BitTorrent announces to the tracker, by outcome (ok or the refusal's reason)"),
                                                      labels: [("outcome", outcome)])
        }
        self.announces = announces
    }

    /// Sets the swarm gauges from the tracker's view (at scrape time; one series per published image).
    func update(_ swarm: SwarmTracker.View) {
        for image in swarm.images {
            let labels = [("image", image.name), ("digest", image.digest)]
            registry.makeGauge(descriptor: Self.name("imagebuild_swarm_seeders", "Nodes seeding a published image"), labels: labels).set(Double(image.seeders))
            registry.makeGauge(descriptor: Self.name("imagebuild_swarm_downloaders", "Nodes fetching a published image from the swarm"), labels: labels).set(Double(image.downloaders))
            registry.makeGauge(descriptor: Self.name("imagebuild_swarm_peer_uploaded_bytes", "Bytes nodes report they sent each other (not the server's web-seed bytes), since the server started"),
                               labels: labels).set(Double(image.uploaded))
        }
    }

    /// Secrets requests by outcome: `delivered` or a `SecretAdmission.Reason` (made once per outcome).
    func secretRequests(_ outcome: String) -> Counter {
        registry.makeCounter(descriptor: Self.name("imagebuild_secret_requests_total", "Requests for node secrets, by outcome (delivered or the refusal's reason)"),
                             labels: [("outcome", outcome)])
    }

    private static func name(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }

    func request(_ route: Route, status: Int, bodyBytes: Int?) {
        let index = min(4, max(0, status / 100 - 1))
        requests[route]![index].increment()
        if let bodyBytes, bodyBytes > 0 { bytes[route]!.increment(by: Int64(bodyBytes)) }
    }

    /// What a file answered by `FastPath` counts (a 2xx of `files`, its body bytes sent from memory,
    /// a fast-path response), with the counters looked up once rather than per request.
    func fastFileAnswered() -> @Sendable (_ bodyBytes: Int) -> Void {
        let answered = requests[.files]![1], sent = bytes[.files]!, fast = fastPathResponses
        return { count in
            answered.increment()
            if count > 0 { sent.increment(by: Int64(count)) }
            fast.increment()
        }
    }

    func sent(_ route: Route, bytes count: UInt64) {
        if count > 0 { bytes[route]!.increment(by: Int64(clamping: count)) }
    }

    func timedOut(_ reason: ConnectionTimeoutReason) {
        closedByTimeout[reason]!.increment()
    }

    /// Sets the inventory gauges (at scrape time, like the stages).
    func update(_ status: InventoryStatus) {
        inventoryRejected.set(Double(status.rejected == nil ? 0 : 1))
        inventoryUnpublished.set(Double(status.published?.count ?? 0))
        publishedGeneration.set(Double(status.published?.generation ?? 0))
    }

    /// Sets the per-stage gauges from the current node list (done at scrape time: always exact).
    func updateStages(_ nodes: [NodeStatus], unattributed count: UInt64) {
        var counts: [BootStage: Int] = [:]
        for node in nodes { counts[node.stage, default: 0] += 1 }
        for (stage, gauge) in nodesByStage { gauge.set(Double(counts[stage] ?? 0)) }
        unattributed.set(Double(count))
    }
}

/// Counts every response by route group and status class (errors thrown by handlers included).
struct MetricsMiddleware<Context: RequestContext>: RouterMiddleware {
    let metrics: HTTPMetrics

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            let response = try await next(request, context)
            let route = Self.route(request.uri.path, status: response.status.code)
            // File bodies are counted as they are sent (a download can stop half-way).
            metrics.request(route, status: response.status.code, bodyBytes: route == .files ? nil : response.body.contentLength)
            return response
        } catch {
            let status = (error as? any HTTPResponseError)?.status.code ?? 500
            metrics.request(Self.route(request.uri.path, status: status), status: status, bodyBytes: nil)
            throw error
        }
    }

    /// The route group of an answer: by path for the service's routes; what no route answers is a
    /// file of the boot root when one was found (2xx, 3xx, 416), else `other` (404, 403, 400).
    static func route(_ path: String, status: Int) -> HTTPMetrics.Route {
        if path.hasPrefix(BootPlan.bootScriptPath) { return .bootscript }
        if path.hasPrefix(BootPlan.secretsPrefix) { return .secrets }
        if path.hasPrefix(CloudInit.prefix) { return .cloudInit }
        if path.hasPrefix("/api/v1/events") { return .events }
        if path.hasPrefix("/api/v1/nodes") { return .nodes }
        if path == "/api/v1/inventory" { return .inventory }
        if path == "/metrics" { return .metrics }
        if path == "/" { return .status }
        if path.hasPrefix(Torrent.announcePath) || path == "/api/v1/swarm" { return .swarm }
        return status < 400 || status == 416 ? .files : .other
    }
}
