import ArgumentParser
import BootServer
import Foundation
import ImageBuildKit
import PowerControl

/// What `power` and `reboot` share: the inventory, which nodes, how many BMCs at once, time-outs.
struct PowerOptions: ParsableArguments {
    @Argument(help: ArgumentHelp(
        "The nodes: hostnames, bracket ranges (node[001-064], rack[1-2]-n[01-16]), groups (or group:NAME), MACs, or all; several separated by spaces or commas.",
        valueName: "nodes"))
    var nodeNames: [String] = []

    @Option(name: .customLong("nodes"), help: ArgumentHelp("The node inventory, with each node's bmc: settings.", valueName: "file"))
    var inventoryPath: String = "nodes.yaml"

    @Option(help: ArgumentHelp("The server's state directory: machines bound there by discovery or 'nodes adopt' are nodes too.", valueName: "dir"))
    var stateDir: String = ServerConfigFile.defaultStateDirectory

    @Option(help: "How many BMCs to talk to at once.")
    var parallel: Int = 32

    @Option(name: .customLong("bmc-timeout"), help: ArgumentHelp("Seconds to wait for each answer from a BMC.", valueName: "seconds"))
    var bmcTimeout: Double = 20

    func validate() throws {
        guard !nodeNames.isEmpty else { throw ValidationError("name the nodes: hostnames, node[001-064], a group, or all") }
        guard (1...1024).contains(parallel) else { throw ValidationError("--parallel must be 1...1024") }
        guard bmcTimeout >= 1, bmcTimeout <= 600 else { throw ValidationError("--bmc-timeout must be 1...600 seconds") }
    }

    /// The inventory and the chosen nodes, each with its BMC or the located reason it has none.
    func entries() throws -> (Inventory, [Inventory.Node], [PowerController.Entry]) {
        // As serve sees it: nodes.yaml with the bindings merged (a bound machine's group gives its BMC).
        let inventory = try inventoryWithBindings(nodes: inventoryPath, stateDirectory: stateDir)
        let nodes = try NodeSelection.select(nodeNames, in: inventory)
        let templates = NodeTemplates(inventory: inventory)
        let entries = nodes.map { node in
            PowerController.Entry(node: node.hostname, target: Result {
                do { return try inventory.bmcTarget(for: node, templates: templates) } catch {
                    throw BMCError(.config, "\(error)")
                }
            }.mapError { $0 as! BMCError })
        }
        return (inventory, nodes, entries)
    }

    func controller() -> PowerController {
        PowerController(timeout: .milliseconds(Int64(bmcTimeout * 1000)))
    }
}

struct PowerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "power",
        abstract: "Ask or change nodes' power through their BMCs (IPMI or Redfish).",
        discussion: """
            imagebuild power status|on|off|cycle|reset NODES [--pxe]

            Each node's BMC comes from its bmc: settings in nodes.yaml (address,
            protocol ipmi or redfish, user, password_file; see docs/power.md). Many
            BMCs are asked at once (--parallel); one node's failure (a wrong password,
            a BMC that does not answer or hangs, a password file others can read)
            is reported with its reason and never stops the others. The exit status
            is 0 only when every node succeeded.

              status  the power state each BMC reports
              on      power on (a node already on is left alone)
              off     hard power off (stateless nodes have nothing to save)
              cycle   off, then on; a node that is off is powered on
              reset   warm reset of a running node

            --pxe first sets a one-time network boot (IPMI chassis bootdev pxe, with
            the EFI flag when bmc.boot_mode is uefi; Redfish BootSourceOverrideTarget
            Pxe, Once). 'imagebuild reboot NODES --wait' does --pxe + cycle and then
            follows each node's boot on the running server.

            IPMI uses Debian's ipmitool (lanplus), given the password file with -f;
            Redfish uses HTTPS with the certificate check bmc.tls asks for. The
            password never appears in output, --json or an error.
            """)

    @Argument(help: "status, on, off, cycle or reset.")
    var action: PowerAction

    @OptionGroup var options: PowerOptions

    @Flag(help: "Set a one-time network boot before on, cycle or reset.")
    var pxe = false

    @Flag(help: "Print the results as a JSON array instead of the table.")
    var json = false

    func validate() throws {
        if pxe && (action == .status || action == .off) { throw ValidationError("--pxe goes with on, cycle or reset") }
    }

    func run() async throws {
        let (_, _, entries): (Inventory, [Inventory.Node], [PowerController.Entry])
        do { (_, _, entries) = try options.entries() } catch { fail(error) }
        let controller = options.controller()
        let results = await controller.run(action, on: entries, networkBoot: pxe, parallel: options.parallel)
        await controller.shutdown()
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            FileHandle.standardOutput.write(try encoder.encode(results) + Data("\n".utf8))
        } else {
            print(PowerTable.render(results), terminator: "")
        }
        if results.contains(where: { !$0.ok }) { throw ExitCode(1) }
    }
}

extension PowerAction: ExpressibleByArgument {}
