import ArgumentParser
import Foundation
import BootServer
import ImageBuildKit

struct PublishCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "publish",
        abstract: "Lay artifacts and boot configuration into a boot root (served by TFTP and HTTP).",
        discussion: """
            Copies each artifacts/<name> to images/<name>/<digest>/, the boot loaders of
            Debian's pxelinux, syslinux-common and ipxe packages, and renders
            pxelinux.cfg/{default,01-<mac>,<HEXIP>} and ipxe/{boot.ipxe,nodes/<mac>.ipxe}
            from nodes.yaml. Atomic: the new configuration is written aside and switched
            in with one rename; a failed or killed publish leaves the root as it was,
            every kept generation included.
            Earlier versions are kept (--keep); --rollback goes back one, --forward
            undoes a rollback. Every switch is logged in .publish/history.jsonl
            (--history prints it).
            Machines bound outside nodes.yaml (discover: in nodes.yaml, or 'imagebuild
            nodes adopt') are read from the server's state directory (--state-dir, else
            state_dir in --config, else /var/lib/imagebuild) and published as nodes;
            nodes.yaml wins a conflict and a warning says so.
            """)

    @Argument(help: "Artifact folders (artifacts/<name>) to publish.")
    var artifacts: [String] = []

    @Option(help: "The boot root.")
    var root: String = "tftpboot"

    @Option(help: "The node inventory.")
    var nodes: String = "nodes.yaml"

    @Option(help: "imagebuild serve's settings file (server.yaml): its state_dir is where bindings are read.")
    var config: String?

    @Option(help: "The server's state directory, whose discovery/bindings are merged into nodes.yaml (default: state_dir in --config, else /var/lib/imagebuild).")
    var stateDir: String?

    @Option(help: "How many published versions to keep.")
    var keep: Int = 3

    @Flag(help: "Switch back to the previous published version.")
    var rollback = false

    @Flag(help: "Undo a --rollback: switch to the next newer published version.")
    var forward = false

    @Flag(help: "Print every switch of this root (publish, rollback, forward), oldest first.")
    var history = false

    func validate() throws {
        if keep < 1 { throw ValidationError("--keep must be at least 1") }
        if [rollback, forward, history].filter({ $0 }).count > 1 {
            throw ValidationError("--rollback, --forward and --history are exclusive")
        }
        if (rollback || forward || history) && !artifacts.isEmpty {
            throw ValidationError("--rollback, --forward and --history take no artifact folders")
        }
        if !rollback && !forward && !history && artifacts.isEmpty && !FileManager.default.fileExists(atPath: root + "/publish.json") {
            throw ValidationError("give at least one artifact folder (e.g. artifacts/minimal)")
        }
    }

    func run() throws {
        do {
            if history {
                for line in Publisher.history(root: root) { print(line) }
                return
            }
            if rollback || forward {
                let generation = try Publisher.switchGeneration(root: root, rollback ? .back : .forward)
                print("\(rollback ? "rolled back" : "rolled forward"): \(root) now serves generation \(generation)")
                return
            }
            var flags = ServerConfigFile()
            flags.stateDirectory = stateDir
            let state = try ServerConfigFile.merged(flags: flags, configPath: config).resolvedStateDirectory
            let inventory = try inventoryWithBindings(nodes: nodes, stateDirectory: state)
            let index = try Publisher(root: root, inventory: inventory, keep: keep).publish(artifacts: artifacts)
            print("published generation \(index.generation) to \(root)")
            for image in index.images.values.sorted(by: { $0.name < $1.name }) {
                print("  image \(image.name) \(image.digest) (kernel \(image.kernelVersion))")
            }
            print("  \(index.nodes.count) nodes, \(index.ranges.count) ranges, default: \(index.defaultImage ?? "none (unregistered machines wait)")")
        } catch {
            fail(error)
        }
    }
}
