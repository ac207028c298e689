import ArgumentParser
import BootServer
import Foundation
import ImageBuildKit
import PowerControl

struct RebootCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reboot",
        abstract: "Network-boot nodes again through their BMCs, and with --wait follow each boot to 'up'.",
        discussion: """
            For each node: a one-time network boot, then a power cycle (a node that is
            off is powered on), through its BMC as 'imagebuild power cycle --pxe' does.

            With --wait it then follows every node's boot timeline on the running
            'imagebuild serve' (--server, default: the server address and HTTP port of
            nodes.yaml) until each is 'up' or has failed. Only what the server sees
            after the power command counts. On a terminal a live table shows each
            node's stage and how many are at each stage; otherwise one line is
            printed per change. The exit status is 0 only when every node is up;
            otherwise every node that did not make it is listed with the last stage
            it reached and the server's hint.
            """)

    @OptionGroup var options: PowerOptions

    @Flag(help: "Follow each node's boot on the running server until it is up or failed.")
    var wait = false

    @Option(help: "The server's HTTP base URL for --wait (default: http://<network.server>:<http_port> of nodes.yaml).")
    var server: String?

    @Option(name: .customLong("node-timeout"), help: "Seconds a node may take from the power command to 'up'.")
    var nodeTimeout: Double = 600

    @Option(help: "Seconds the whole --wait may take.")
    var timeout: Double = 1800

    @Flag(name: .customLong("no-pxe"), help: "Power-cycle without setting a one-time network boot.")
    var noPXE = false

    @Flag(help: "Print the power results and the outcome as JSON.")
    var json = false

    func validate() throws {
        guard nodeTimeout > 0, timeout > 0 else { throw ValidationError("time-outs must be positive") }
        if let server, URL(string: server)?.scheme?.hasPrefix("http") != true {
            throw ValidationError("--server must be an http:// URL, got '\(server)'")
        }
    }

    struct Outcome: Encodable {
        var node: String
        var mac: String
        var outcome: String
        var up: Bool
        var hint: String?
    }

    func run() async throws {
        let inventory: Inventory, nodes: [Inventory.Node], entries: [PowerController.Entry]
        do { (inventory, nodes, entries) = try options.entries() } catch { fail(error) }
        let base = (server ?? inventory.network.httpBase).trimmingCharacters(in: CharacterSet(charactersIn: "/"))
        let nodesURL = URL(string: base + "/api/v1/nodes")!
        // The server's clock against ours, so each node's power command is placed on the server's
        // timeline: what the server sees of a node after its command returned is its new boot.
        var clockOffset = 0.0
        if wait {
            do { clockOffset = try await Self.fetchNodes(nodesURL).now - Date().timeIntervalSince1970 } catch { fail(error) }
        }
        let poweredAt = PoweredTimes()
        let controller = options.controller()
        let results = await controller.run(.cycle, on: entries, networkBoot: !noPXE, parallel: options.parallel) { result in
            poweredAt.set(result.node, Date().timeIntervalSince1970)
        }
        await controller.shutdown()
        if !json { print(PowerTable.render(results), terminator: "") }
        guard wait else {
            if json { try printJSON(results) }
            if results.contains(where: { !$0.ok }) { throw ExitCode(1) }
            return
        }

        var watch = RebootWatch(nodes: nodes.map { ($0.hostname, $0.mac.description) }, nodeTimeout: nodeTimeout)
        for result in results {
            if result.ok {
                watch.powered(result.node, at: (poweredAt.get(result.node) ?? Date().timeIntervalSince1970) + clockOffset)
            } else {
                watch.powerFailed(result.node, result.error ?? "failed")
            }
        }
        let start = Date().timeIntervalSince1970 + clockOffset
        let terminal = !json && isatty(STDOUT_FILENO) == 1
        let deadline = ContinuousClock.now + .milliseconds(Int64(timeout * 1000))
        var lastError: String?
        while !watch.finished && ContinuousClock.now < deadline {
            do {
                let response = try await Self.fetchNodes(nodesURL)
                lastError = nil
                let changed = watch.update(response)
                if terminal {
                    print("\u{1B}[H\u{1B}[2J" + "reboot: \(nodes.count) nodes, \(NodeStatusTable.duration(max(0, response.now - start))) since the power command\n"
                        + watch.summary + "\n\n" + watch.table(now: response.now), terminator: "")
                } else if !json {
                    for index in changed {
                        let node = watch.nodes[index]
                        print(String(format: "%7.1fs  ", max(0, response.now - start)) + "\(node.hostname)  \(RebootWatch.describe(node.outcome))")
                    }
                }
            } catch {
                // The server restarting or briefly away is no reason to give up on the nodes.
                let text = "\(error)"
                if text != lastError, !json { FileHandle.standardError.write(Data("imagebuild: \(text) (retrying)\n".utf8)) }
                lastError = text
            }
            if !watch.finished { try await Task.sleep(for: .seconds(1)) }
        }
        let outcomes = watch.nodes.map { node in
            let up: Bool = if case .up = node.outcome { true } else { false }
            return Outcome(node: node.hostname, mac: node.mac,
                           outcome: node.outcome.isFinal ? RebootWatch.describe(node.outcome) : "still \(RebootWatch.describe(node.outcome)) when --timeout ran out",
                           up: up, hint: up ? nil : node.hint)
        }
        if json {
            struct Report: Encodable { var power: [PowerResult]; var nodes: [Outcome] }
            try printJSON(Report(power: results, nodes: outcomes))
        } else {
            print("\n" + watch.summary)
            for outcome in outcomes where !outcome.up {
                print("  \(outcome.node): \(outcome.outcome)" + (outcome.hint.map { "\n    hint: \($0)" } ?? ""))
            }
        }
        if !outcomes.allSatisfy(\.up) { throw ExitCode(1) }
    }

    /// When each node's power command returned (our clock), written from the controller's tasks.
    final class PoweredTimes: @unchecked Sendable {
        private let lock = NSLock()
        private var times: [String: Double] = [:]
        func set(_ node: String, _ time: Double) { lock.withLock { times[node] = time } }
        func get(_ node: String) -> Double? { lock.withLock { times[node] } }
    }

    static func fetchNodes(_ url: URL) async throws -> NodesResponse {
        // fetchServerJSON blocks on URLSession: keep it off the cooperative pool.
        let data = try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Data, Error>) in
            Thread.detachNewThread { continuation.resume(with: Result { try fetchServerJSON(url) }) }
        }
        return try JSONDecoder().decode(NodesResponse.self, from: data)
    }

    func printJSON<T: Encodable>(_ value: T) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        FileHandle.standardOutput.write(try encoder.encode(value) + Data("\n".utf8))
    }
}
