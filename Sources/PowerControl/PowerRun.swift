import AsyncHTTPClient
import Foundation
import ImageBuildKit
import NIOCore

/// What one node's BMC did, as `imagebuild power` prints it (and `--json` writes it).
public struct PowerResult: Codable, Sendable, Equatable {
    public var node: String
    /// `ipmi://admin@10.78.0.5`: protocol, user and address, never the password.
    public var bmc: String?
    public var action: PowerAction
    public var ok: Bool
    /// The power state the BMC reported before acting (the answer, for `status`).
    public var state: PowerState?
    /// What was done: `powered on`, `cycled`, `already off`, ...
    public var done: String?
    /// The one-time network boot was set (`--pxe`).
    public var networkBoot: Bool
    public var error: String?
    public var errorKind: BMCError.Kind?
    public var seconds: Double

    public init(node: String, bmc: String?, action: PowerAction, ok: Bool, state: PowerState? = nil, done: String? = nil,
                networkBoot: Bool = false, error: String? = nil, errorKind: BMCError.Kind? = nil, seconds: Double = 0) {
        self.node = node
        self.bmc = bmc
        self.action = action
        self.ok = ok
        self.state = state
        self.done = done
        self.networkBoot = networkBoot
        self.error = error
        self.errorKind = errorKind
        self.seconds = seconds
    }
}

/// Runs one power action on many BMCs at once, with at most `parallel` in flight: one slow or broken
/// BMC costs its own time-out and never holds up or stops the others. Each node's failure is its own
/// result, with the reason.
public final class PowerController: Sendable {
    let http: HTTPClient
    public let timeout: Duration
    public let ipmitool: String

    /// `timeout`: for each request to a BMC (a command makes two to four).
    public init(timeout: Duration = .seconds(20), ipmitool: String = "ipmitool") {
        var configuration = HTTPClient.Configuration()
        configuration.redirectConfiguration = .disallow
        configuration.timeout = .init(connect: .seconds(min(10, max(1, timeout.components.seconds))))
        // Many BMCs at once, each its own host: one connection per host is all a command uses.
        configuration.connectionPool = .init(idleTimeout: .seconds(10), concurrentHTTP1ConnectionsPerHostSoftLimit: 2)
        // A refused connection or a failed certificate check is the answer: say it now, instead of
        // retrying until the time-out and calling it one.
        configuration.connectionPool.retryConnectionEstablishment = false
        http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        self.timeout = timeout
        self.ipmitool = ipmitool
    }

    /// Must be called once the work is done (AsyncHTTPClient's rule).
    public func shutdown() async {
        try? await http.shutdown()
    }

    public func client(for target: BMCTarget) throws -> any BMCClient {
        switch target.protocol {
        case .ipmi: IPMIToolClient(target: target, timeout: timeout, executable: ipmitool)
        case .redfish: try RedfishClient(target: target, timeout: timeout, http: http)
        }
    }

    /// One entry per node: its BMC, or why nodes.yaml gives it none (a result without asking anything).
    public struct Entry: Sendable {
        public var node: String
        public var target: Result<BMCTarget, BMCError>
        public init(node: String, target: Result<BMCTarget, BMCError>) {
            self.node = node
            self.target = target
        }
    }

    /// Results in the order of `entries`. `progress` is called as each node finishes (from a task).
    public func run(_ action: PowerAction, on entries: [Entry], networkBoot: Bool, parallel: Int,
                    progress: @escaping @Sendable (PowerResult) -> Void = { _ in }) async -> [PowerResult] {
        var results = [PowerResult?](repeating: nil, count: entries.count)
        await withTaskGroup(of: (Int, PowerResult).self) { group in
            var next = 0
            func startNext() {
                guard next < entries.count else { return }
                let index = next, entry = entries[index]
                next += 1
                group.addTask { (index, await self.runOne(action, entry, networkBoot: networkBoot)) }
            }
            for _ in 0..<max(1, parallel) { startNext() }
            while let (index, result) = await group.next() {
                results[index] = result
                progress(result)
                startNext()
            }
        }
        return results.map { $0! }
    }

    func runOne(_ action: PowerAction, _ entry: Entry, networkBoot: Bool) async -> PowerResult {
        let started = ContinuousClock.now
        var result = PowerResult(node: entry.node, bmc: nil, action: action, ok: false)
        do {
            let target = try entry.target.get()
            result.bmc = target.endpoint
            let client = try client(for: target)
            let state = try await client.powerState()
            result.state = state
            switch (action, state) {
            case (.status, _):
                result.done = nil
            case (.reset, .off):
                throw BMCError(.refused, "the machine is off: reset needs it running (use on or cycle)")
            default:
                if networkBoot {
                    try await client.setOneTimeNetworkBoot(mode: target.bootMode)
                    result.networkBoot = true
                }
                if (action == .on && state == .on) || (action == .off && state == .off) {
                    result.done = "already \(state.rawValue)"
                } else {
                    try await client.apply(action, current: state)
                    result.done = switch action {
                    case .on: "powered on"
                    case .off: "powered off"
                    case .cycle: state == .off ? "was off: powered on" : "power-cycled"
                    case .reset: "reset"
                    case .status: nil
                    }
                }
            }
            result.ok = true
        } catch let error as BMCError {
            result.error = error.message
            result.errorKind = error.kind
        } catch {
            result.error = String(describing: error)
            result.errorKind = .refused
        }
        let elapsed = ContinuousClock.now - started
        result.seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return result
    }
}

/// The text table of `imagebuild power`.
public enum PowerTable {
    public static func render(_ results: [PowerResult]) -> String {
        // For an action the column is the state found before acting.
        let header = ["NODE", "BMC", results.first?.action == .status ? "POWER" : "WAS", "RESULT"]
        var rows: [[String]] = []
        for result in results {
            let outcome: String
            if result.ok {
                var parts: [String] = []
                if result.networkBoot { parts.append("network boot next") }
                if let done = result.done { parts.append(done) }
                outcome = parts.isEmpty ? "ok" : parts.joined(separator: ", ")
            } else {
                outcome = "FAILED (\(result.errorKind?.rawValue ?? "error")): \(result.error ?? "")"
            }
            rows.append([result.node, result.bmc ?? "-", result.state?.rawValue ?? "?", outcome])
        }
        var widths = header.map(\.count)
        for row in rows { for (i, cell) in row.enumerated() where i < 3 { widths[i] = max(widths[i], cell.count) } }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { i, cell in i == cells.count - 1 ? cell : cell.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
                .joined(separator: "  ")
        }
        var text = line(header) + "\n"
        for row in rows { text += line(row) + "\n" }
        let failed = results.filter { !$0.ok }.count
        let on = results.filter { $0.ok && $0.state == .on }.count
        text += "\(results.count) nodes, \(results.count - failed) ok, \(failed) failed"
        if results.first?.action == .status { text += ", \(on) on, \(results.filter { $0.ok && $0.state == .off }.count) off" }
        return text + "\n"
    }
}
