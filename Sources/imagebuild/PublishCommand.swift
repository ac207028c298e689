import ArgumentParser
import Foundation
import BootServer
import ImageBuildKit
import ObjectStore

struct PublishCommand: AsyncParsableCommand {
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

            --store s3://BUCKET/PREFIX also puts each image file in an S3-compatible
            store (Ceph RGW, MinIO, SeaweedFS; path-style requests) under
            PREFIX/images/<name>/<digest>/, and points stage 1 (imagebuild.image=) and the
            torrents' web seeds at it; kernels, initramfs files and the loaders stay in the
            boot root. An object already there with the same size and sha256 is not sent
            again. Every image is uploaded and verified (size, sha256, and an anonymous
            ranged GET as a node makes) before the new configuration is written, so a
            failed or killed upload leaves the nodes booting what they booted. Nodes fetch
            anonymously over http: the bucket or prefix must be publicly readable.
            Endpoint and credentials come from --store-config FILE (YAML: endpoint,
            region, access_key_id, secret_access_key_file, public_url, part_size_mib)
            or from AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL), AWS_REGION (or
            AWS_DEFAULT_REGION, default us-east-1), AWS_ACCESS_KEY_ID,
            AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN; never on the command line, and
            never printed. A publish without --store serves every image from the root
            again. Objects are never deleted by publish. See docs/store.md.
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

    @Option(help: ArgumentHelp("Also put the image files in an S3-compatible store and boot nodes from there (endpoint and credentials: --store-config or AWS_* variables).", valueName: "s3://bucket/prefix"))
    var store: String?

    @Option(help: ArgumentHelp("The store's settings (YAML: endpoint, region, access_key_id, secret_access_key_file, public_url, part_size_mib).", valueName: "file"))
    var storeConfig: String?

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
        if storeConfig != nil && store == nil { throw ValidationError("--store-config needs --store s3://BUCKET/PREFIX") }
        if store != nil && (rollback || forward || history) {
            throw ValidationError("--store publishes; --rollback, --forward and --history switch to what was published (with its store URLs)")
        }
        if !rollback && !forward && !history && artifacts.isEmpty && !FileManager.default.fileExists(atPath: root + "/publish.json") {
            throw ValidationError("give at least one artifact folder (e.g. artifacts/minimal)")
        }
    }

    func run() async throws {
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
            let publisher = Publisher(root: root, inventory: inventory, keep: keep)
            let index: PublishIndex
            if let store {
                // Settings and access are checked before anything is written: a wrong endpoint, bucket or
                // key fails here with the root untouched.
                let settings = try StoreSettings.load(store: store, configFile: storeConfig, environment: ProcessInfo.processInfo.environment)
                let objects = S3ImageStore(settings: settings, uploadsDirectory: root + "/.publish/store-uploads") { print("  " + $0) }
                do {
                    try await objects.checkAccess()
                    index = try await publisher.publish(artifacts: artifacts, store: objects)
                } catch {
                    await objects.shutdown()
                    throw error
                }
                await objects.shutdown()
            } else {
                index = try publisher.publish(artifacts: artifacts)
            }
            print("published generation \(index.generation) to \(root)")
            for image in index.images.values.sorted(by: { $0.name < $1.name }) {
                print("  image \(image.name) \(image.digest) (kernel \(image.kernelVersion)), nodes fetch it from \(image.storeURL ?? "the boot root")")
            }
            print("  \(index.nodes.count) nodes, \(index.ranges.count) ranges, default: \(index.defaultImage ?? "none (unregistered machines wait)")")
        } catch {
            fail(error)
        }
    }
}
