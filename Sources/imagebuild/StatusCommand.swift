import ArgumentParser
import BootServer
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show where each node's boot is, from a running 'imagebuild serve'.",
        discussion: """
            Lists every node in the server's nodes.yaml and every MAC it has
            seen: current stage, time in that stage, last seen and total boot
            time (first DHCP DISCOVER of the boot to 'up'). Nodes stuck in a
            stage longer than it normally takes come first, each with a hint
            of what usually causes it. Above the table: whether the server
            rejected the last change to nodes.yaml, and whether nodes.yaml has
            nodes the published boot root has no files for yet.
            """)

    @Option(help: "The server's HTTP base URL.")
    var server: String = "http://127.0.0.1"

    @Flag(help: "Refresh every --interval seconds until interrupted.")
    var watch = false

    @Option(help: "Seconds between refreshes with --watch.")
    var interval: Double = 2

    @Flag(help: "Print the server's answers as one JSON object {\"inventory\": …, \"nodes\": …} instead of the table.")
    var json = false

    func validate() throws {
        guard URL(string: server)?.scheme?.hasPrefix("http") == true else {
            throw ValidationError("--server must be an http:// URL, got '\(server)'")
        }
        guard interval >= 0.2 else { throw ValidationError("--interval must be at least 0.2 s") }
        if json && watch { throw ValidationError("--json prints once; leave out --watch") }
    }

    func run() throws {
        let base = server.hasSuffix("/") ? String(server.dropLast()) : server
        let url = URL(string: base + "/api/v1/nodes")!
        let inventoryURL = URL(string: base + "/api/v1/inventory")!
        if json {
            do {
                let nodes = try fetch(url), inventory = try fetch(inventoryURL)
                FileHandle.standardOutput.write(Data("{\"inventory\":".utf8) + inventory + Data(",\"nodes\":".utf8) + nodes + Data("}\n".utf8))
            } catch {
                fail(error)
            }
            return
        }
        repeat {
            var text = ""
            do {
                let response = try JSONDecoder().decode(NodesResponse.self, from: try fetch(url))
                // A server older than the inventory endpoint answers 404: the table alone then.
                if let status = try? JSONDecoder().decode(InventoryStatus.self, from: try fetch(inventoryURL)) {
                    for warning in status.warnings { text += "warning: \(warning)\n" }
                    if !status.warnings.isEmpty { text += "\n" }
                }
                text += NodeStatusTable.render(response.nodes, now: response.now)
            } catch {
                guard watch else { fail(error) }
                text = "imagebuild: \(error) (retrying)\n"
            }
            if watch {
                // Clear the screen and home the cursor, then redraw.
                print("\u{1B}[H\u{1B}[2J" + Date().formatted(date: .omitted, time: .standard) + "  \(server)\n", terminator: "")
            }
            print(text, terminator: "")
            if watch { Thread.sleep(forTimeInterval: interval) }
        } while watch
    }

    func fetch(_ url: URL) throws -> Data { try fetchServerJSON(url) }
}

/// A plain GET of a running server's JSON API with a time-out (`status`, `reboot --wait`).
func fetchServerJSON(_ url: URL) throws -> Data {
    final class Result: @unchecked Sendable {
        var data: Data?
        var error: (any Error)?
        var status = 0
    }
    let result = Result()
    let done = DispatchSemaphore(value: 0)
    var request = URLRequest(url: url, timeoutInterval: 10)
    request.setValue("application/json", forHTTPHeaderField: "Accept")
    URLSession.shared.dataTask(with: request) { data, response, error in
        result.data = data
        result.error = error
        result.status = (response as? HTTPURLResponse)?.statusCode ?? 0
        done.signal()
    }.resume()
    done.wait()
    if let error = result.error { throw StatusError.unreachable(url.absoluteString, "\(error.localizedDescription)") }
    guard result.status == 200, let data = result.data else {
        throw StatusError.badResponse(url.absoluteString, result.status, String(decoding: result.data ?? Data(), as: UTF8.self))
    }
    return data
}

enum StatusError: Error, CustomStringConvertible {
    case unreachable(String, String)
    case badResponse(String, Int, String)

    var description: String {
        switch self {
        case .unreachable(let url, let why): "cannot reach \(url): \(why) (is 'imagebuild serve' running? --server URL)"
        case .badResponse(let url, let status, let body): "\(url) answered HTTP \(status): \(body.prefix(200))"
        }
    }
}
