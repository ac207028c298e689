import ArgumentParser
import BootServer
import Foundation
import ImageBuildKit

struct NodesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nodes",
        abstract: "Questions about nodes and what they boot.",
        subcommands: [Check.self, Explain.self, KnownHostsCommand.self, Discovered.self, Adopt.self])

    struct Explain: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show which files a node's boot loader would try, which one wins, and what it boots.",
            discussion: """
                pxelinux tries pxelinux.cfg/01-<mac>, then the IP in hex dropping one digit at
                a time (8 names), then default. This prints that order for the node (the IP
                from --ip, else from nodes.yaml), marks what exists in the root, and shows the
                iPXE path too. The order comes from pxelinuxLookupOrder, the function the
                pxelinux lookup-order tests pin down.

                For a node with 'loader: grub' (Secure Boot: shim, then GRUB) or an arm64 image
                (arm64 machines boot through GRUB), it also prints GRUB's walk: GRUB reads
                grub/grub.cfg, which tries grub/grub.cfg-01-<mac>, then grub/grub.cfg-<IP>,
                then grub/grub.cfg-default.

                'boots:' is the boot plan's answer (the rule publish, DHCP and the bootscript
                endpoint share: registered node, else the most specific range holding the IP,
                else the default image) with the images published in --root.

                For a registered node it then lists what makes the node itself: the files it
                gets (which are secret, their mode and owner, and which level of nodes.yaml
                each comes from: built in, defaults, group, range or node), its variables with
                their values and levels, its extra interfaces and its SSH host keys. A secret's
                content is never printed.
                """)

        @Argument(help: "The node's MAC address: aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff, aabb.ccdd.eeff or aabbccddeeff.")
        var mac: String

        @Option(help: "The node's IPv4 address (default: its fixed IP from nodes.yaml).")
        var ip: String?

        @Option(help: "The boot root.")
        var root: String = "tftpboot"

        @Option(help: "The node inventory (optional; for names and the fixed IP).")
        var nodes: String = "nodes.yaml"

        @Option(help: "The server's state directory: bound machines (discovery/bindings) count as nodes (default: /var/lib/imagebuild).")
        var stateDir: String = ServerConfigFile.defaultStateDirectory

        @Flag(help: "Print the answer as JSON.")
        var json = false

        /// What `explain` found, printed as text or JSON.
        struct Explanation: Encodable {
            struct Candidate: Encodable { var name: String; var exists: Bool; var used: Bool }
            var mac: String
            var hostname: String?
            var ip: String?
            var group: String?
            var inventory: String?
            /// Where the node is bound when nodes.yaml does not list it (`bindings:LINE`).
            var boundIn: String?
            /// What DHCP hands a BIOS machine by the `loader` setting (nil without an inventory).
            var biosLoader: String?
            var firmwareGets: String?
            var ipxeROMGets: String?
            /// What DHCP hands an x86-64 UEFI PXE machine (nil without an inventory).
            var uefiGets: String?
            /// The boot plan's answer with the published images: what the bootscript endpoint boots, and why.
            var boots: String?
            /// How stage 1 fetches the image (`distribution:`) and where that was set.
            var fetches: String?
            var pxelinux: [Candidate]
            /// The KERNEL, APPEND and comment lines of the file pxelinux would use.
            var pxelinuxUses: [String]
            var ipxe: [Candidate]
            var ipxeUses: String?
            /// GRUB's walk (`loader: grub`, or any GRUB file in the root), and the lines of the file it uses.
            var grub: [Candidate]? = nil
            var grubUses: [String]? = nil
            /// The node's identity (registered nodes only): what it gets, and from which level.
            var identity: Identity?
        }

        struct Identity: Encodable {
            struct File: Encodable { var path: String; var secret: Bool; var mode: String; var owner: String; var from: String; var at: String }
            struct Variable: Encodable { var name: String; var value: String; var from: String }
            var files: [File]
            var vars: [Variable]
            var interfaces: [String]
            var sshHostKeys: String
            var secretsURL: String?
            var error: String?
        }

        /// Files, variables, interfaces and host keys of `node`, each with the level it comes from.
        static func identity(of node: Inventory.Node, in inventory: Inventory) -> Identity {
            let identity: NodeIdentity
            do { identity = try inventory.identity(of: node) } catch {
                return Identity(files: [], vars: [], interfaces: [], sshHostKeys: "", error: "\(error)")
            }
            func text(_ value: TemplateValue) -> String {
                switch value {
                case .text(let text): text
                case .bool(let bool): "\(bool)"
                case .list(let list): "[" + list.map(text).joined(separator: ", ") + "]"
                case .map(let map): "{" + map.sorted { $0.key < $1.key }.map { "\($0.key): \(text($0.value))" }.joined(separator: ", ") + "}"
                }
            }
            return Identity(
                files: identity.files.map {
                    .init(path: $0.file.path, secret: $0.file.secret, mode: String(format: "%04o", $0.file.mode),
                          owner: $0.file.owner.description, from: $0.level.description,
                          at: $0.level == .builtIn ? "" : $0.file.location.description)
                },
                vars: identity.vars.keys.sorted().map { .init(name: $0, value: text(identity.vars[$0]!), from: identity.varLevels[$0]!.description) },
                interfaces: identity.interfaces.map { interface in
                    "\(interface.name ?? interface.mac!.description) \(interface.address)/\(interface.prefix)"
                        + (interface.gateway.map { " via \($0)" } ?? "") + (interface.mtu.map { " mtu \($0)" } ?? "")
                },
                sshHostKeys: identity.hostKeys == .persistent
                    ? "persistent: made once, kept in the server's state directory, delivered as secrets" + (identity.hostCA.map { ", certified by \($0)" } ?? "")
                    : "none: the image's own",
                secretsURL: identity.hasSecrets ? inventory.network.httpBase + BootPlan.secretsPath(node.mac) : nil)
        }

        func run() throws {
            guard let mac = MACAddress(mac) else { fail(ValidationError("'\(self.mac)' is not a MAC address")) }
            var address: IPv4Address?
            if let ip {
                guard let parsed = IPv4Address(ip) else { fail(ValidationError("'\(ip)' is not an IPv4 address")) }
                address = parsed
            }
            let inventory = FileManager.default.fileExists(atPath: nodes) ? try? inventoryWithBindings(nodes: nodes, stateDirectory: stateDir) : nil
            let node = inventory?.node(mac: mac)
            address = address ?? node?.ip
            var answer = Explanation(mac: mac.description, hostname: node?.hostname, ip: address?.description, group: node?.group,
                                     inventory: inventory == nil ? nil : nodes, pxelinux: [], pxelinuxUses: [], ipxe: [])
            if let inventory {
                // The boot plan's answers: what DHCP hands a BIOS machine, and what the bootscript endpoint boots.
                let published = try? PublishIndex.read(root: root)
                let plan = published.map { BootPlan(inventory: inventory, index: $0) } ?? BootPlan(inventory: inventory)
                let bios = plan.biosBoot(for: node)
                answer.biosLoader = inventory.loader(for: node)?.rawValue ?? "not set"
                answer.firmwareGets = bios.firmwareFile
                answer.ipxeROMGets = bios.ipxeROMFile ?? "its boot script"
                answer.uefiGets = plan.uefiFile(for: node).map { "\($0) (loader: grub, Secure Boot: shim, then GRUB)" } ?? "ipxe/ipxe.efi"
                switch plan.answer(mac: mac, ip: address) {
                case .boot(let target, let why):
                    answer.boots = "\(target.image.name) \(target.image.digest) (\(why))"
                    let origin = plan.choice(mac: mac, ip: address)?.resolution.distributionLocation.map { " (distribution: p2p at \($0))" } ?? ""
                    answer.fetches = target.torrentPath.map {
                        "from the swarm\(origin): \(inventory.network.httpBase)/\($0), seeding \(target.seedTime) s after switch_root"
                    } ?? "over HTTP from this server"
                case .wait(let reason): answer.boots = "nothing yet: \(reason)"
                }
            }
            var winner: String?
            for name in pxelinuxLookupOrder(mac: mac, ip: address) {
                let exists = FileManager.default.fileExists(atPath: root + "/" + name)
                answer.pxelinux.append(.init(name: name, exists: exists, used: exists && winner == nil))
                if exists && winner == nil { winner = name }
            }
            if let winner, let text = try? String(contentsOfFile: root + "/" + winner, encoding: .utf8) {
                answer.pxelinuxUses = text.split(separator: "\n")
                    .filter { $0.contains("KERNEL") || $0.contains("APPEND") || $0.hasPrefix("#") }
                    .map { $0.trimmingCharacters(in: .whitespaces) }
            }
            let script = BootPlan.ipxeScriptPath(mac)
            let ownScript = FileManager.default.fileExists(atPath: root + "/" + script)
            answer.ipxe = [.init(name: script, exists: ownScript, used: ownScript),
                           .init(name: "ipxe/default.ipxe", exists: FileManager.default.fileExists(atPath: root + "/ipxe/default.ipxe"), used: !ownScript)]
            let used = root + "/" + (ownScript ? script : "ipxe/default.ipxe")
            if let text = try? String(contentsOfFile: used, encoding: .utf8), let line = text.split(separator: "\n").first(where: { $0.hasPrefix("# ") }) {
                answer.ipxeUses = String(line)
            }
            var grub: [Explanation.Candidate] = []
            // The first name is the entry point GRUB reads; the walk it holds decides among the rest.
            for (position, name) in grubLookupOrder(mac: mac, ip: address).map({ BootPlan.grubFolder + "/" + $0 }).enumerated() {
                let exists = FileManager.default.fileExists(atPath: root + "/" + name)
                grub.append(.init(name: name, exists: exists, used: position > 0 && exists && !grub.contains(where: \.used)))
            }
            if inventory?.loader(for: node) == .grub || grub.contains(where: \.exists) {
                answer.grub = grub
                if let used = grub.first(where: \.used), let text = try? String(contentsOfFile: root + "/" + used.name, encoding: .utf8) {
                    answer.grubUses = text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
                        .filter { $0.hasPrefix("linux ") || $0.hasPrefix("if linux ") || $0.hasPrefix("#") }
                }
            }
            if let inventory, let node { answer.identity = Self.identity(of: node, in: inventory) }
            if let inventory, let node, node.location.file != inventory.file { answer.boundIn = node.location.description }
            if json { printJSON(answer) } else { print(render(answer), terminator: "") }
        }

        func render(_ answer: Explanation) -> String {
            var out = ""
            if let hostname = answer.hostname {
                out += "\(answer.mac): \(hostname) \(answer.boundIn.map { "bound in \($0)" } ?? "in \(nodes)")\(answer.ip.map { ", fixed IP \($0)" } ?? "")\(answer.group.map { ", group \($0)" } ?? "")\n"
            } else {
                out += "\(answer.mac): not in \(answer.inventory == nil ? "an inventory" : nodes)\n"
            }
            if answer.ip == nil { out += "  (no IP known: give --ip to include the hex-IP names)\n" }
            if let loader = answer.biosLoader, let firmware = answer.firmwareGets, let rom = answer.ipxeROMGets {
                out += "  BIOS boot (loader: \(loader)): firmware PXE gets \(firmware), an iPXE ROM gets \(rom); UEFI gets \(answer.uefiGets ?? "ipxe/ipxe.efi")\n"
                out += "  arm64 UEFI gets \(BootPlan.arm64GRUB) (PXE) or \(BootPlan.arm64HTTPGRUB) (HTTP Boot)\n"
            }
            if let boots = answer.boots { out += "  boots: \(boots)\n" }
            if let fetches = answer.fetches { out += "  image: \(fetches)\n" }
            out += "\npxelinux would try, in order:\n"
            for candidate in answer.pxelinux {
                let mark = candidate.used ? "found  <- used" : candidate.exists ? "found" : "-"
                out += "  \(candidate.name.padding(toLength: 36, withPad: " ", startingAt: 0)) \(mark)\n"
            }
            for line in answer.pxelinuxUses { out += "    \(line)\n" }
            if !answer.pxelinux.contains(where: \.used) { out += "  nothing found: run 'imagebuild publish' for this root\n" }
            out += "\niPXE: imagebuild serve answers with the 'boots:' line above; from a plain web server, ipxe/boot.ipxe chains:\n"
            for candidate in answer.ipxe {
                let mark = candidate.used ? (candidate.exists ? "found  <- used" : "<- used") : candidate.exists ? "" : "-"
                out += "  \(candidate.name.padding(toLength: 36, withPad: " ", startingAt: 0)) \(mark)\n"
            }
            if let line = answer.ipxeUses { out += "    \(line)\n" }
            if let grub = answer.grub {
                out += "\nGRUB (shim's for loader: grub, and arm64 machines') reads grub/grub.cfg, whose walk tries, in order:\n"
                for candidate in grub {
                    let mark = candidate.used ? "found  <- used" : candidate.exists ? "found" : "-"
                    out += "  \(candidate.name.padding(toLength: 36, withPad: " ", startingAt: 0)) \(mark)\n"
                }
                for line in answer.grubUses ?? [] { out += "    \(line)\n" }
                if !grub.contains(where: \.used) { out += "  nothing found: run 'imagebuild publish' for this root\n" }
            }
            if let identity = answer.identity {
                out += "\nits own files (laid over the root by stage 1; secrets only from the live server, to the node itself):\n"
                if let error = identity.error { out += "  \(error)\n" }
                for file in identity.files {
                    let kind = file.secret ? "secret" : "file  "
                    out += "  \(kind) \(file.path.padding(toLength: 34, withPad: " ", startingAt: 0)) \(file.mode) \(file.owner.padding(toLength: 12, withPad: " ", startingAt: 0)) from \(file.from)\(file.at.isEmpty ? "" : " (\(file.at))")\n"
                }
                if !identity.vars.isEmpty { out += "vars:\n" }
                for variable in identity.vars { out += "  \(variable.name) = \(variable.value)  (\(variable.from))\n" }
                for interface in identity.interfaces { out += "interface: \(interface)\n" }
                if !identity.sshHostKeys.isEmpty { out += "ssh host keys: \(identity.sshHostKeys)\n" }
                if let url = identity.secretsURL { out += "secrets: \(url)\n" }
            }
            return out
        }
    }
}

extension NodesCommand {
    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check a nodes.yaml without writing anything, and show what differs from the boot root.",
            discussion: """
                Reports every broken group, range and node at once (FILE:LINE:COLUMN: message),
                then every node file that would fail publish (a missing source, a secret others
                can read or inside the root, a template error or unknown variable for any node),
                then every node's BMC that would fail 'imagebuild power' before asking anything
                (a field missing at every level, an address template that renders no address, a
                password file others can read), then, when --root holds a published generation, every image the inventory names
                that is not published, and which nodes and ranges were added, removed or changed
                since that publish (nodes added to nodes.yaml boot from the bootscript endpoint at
                once, but get pxelinux.cfg files only from the next publish). Exits 1 on errors.
                """)

        @Argument(help: "The node inventory.")
        var file: String = "nodes.yaml"

        @Option(help: "The boot root to compare with (skipped when nothing is published there).")
        var root: String = "tftpboot"

        @Option(help: "The server's state directory: machines bound there (discovery/bindings) are checked and compared as nodes (default: /var/lib/imagebuild).")
        var stateDir: String = ServerConfigFile.defaultStateDirectory

        @Flag(help: "Print the answer as JSON.")
        var json = false

        struct Report: Encodable {
            struct Problem: Encodable { var location: String; var message: String; var hint: String? }
            var file: String
            var ok: Bool
            var errors: [Problem]
            var nodes: Int?
            var ranges: Int?
            var groups: Int?
            /// The boot root's published generation, or nil when nothing is published there.
            var root: String?
            var published: InventoryDrift?
        }

        func run() throws {
            var problems: [ConfigError] = []
            var inventory: Inventory?
            do {
                // With the bindings, as publish and serve read it (their notes go to stderr).
                inventory = try inventoryWithBindings(nodes: file, stateDirectory: stateDir)
            } catch let error as ConfigErrors {
                problems = error.errors
            } catch let error as ConfigError {
                problems = [error]
            } catch {
                fail(error)
            }
            let index = try? PublishIndex.read(root: root)
            if let inventory {
                // Node files: sources, secrets' modes, templates (every node rendered, as publish does).
                do {
                    try NodeFileChecks.check(inventory, root: root)
                    _ = try OverlayPlan.render(inventory, mtime: 0)
                } catch let error as ConfigErrors {
                    problems += error.errors
                } catch let error as ConfigError {
                    problems.append(error)
                }
                // BMCs: each resolves, and its password file is private (what `power` needs).
                do {
                    try inventory.checkBMCs()
                } catch let error as ConfigErrors {
                    problems += error.errors
                } catch let error as ConfigError {
                    problems.append(error)
                }
            }
            if let inventory, let index {
                // Images: each is published, and a p2p node's can be shared (what publish refuses).
                let plan = BootPlan(inventory: inventory, index: index)
                problems += plan.architectureProblems() + plan.distributionProblems()
                do {
                    try inventory.checkImages(Set(index.images.keys))
                } catch let error as ConfigErrors {
                    problems += error.errors
                } catch let error as ConfigError {
                    problems.append(error)
                }
            }
            let drift = inventory.flatMap { inventory in index.map { InventoryDrift(inventory: inventory, published: $0) } }
            let report = Report(
                file: file, ok: problems.isEmpty,
                errors: problems.map { .init(location: $0.location.description, message: $0.message, hint: $0.hint) },
                nodes: inventory?.nodes.count, ranges: inventory?.ranges.count, groups: inventory?.groups.count,
                root: index == nil ? nil : root, published: drift)
            if json {
                printJSON(report)
            } else {
                print(render(report, problems: problems), terminator: "")
            }
            if !problems.isEmpty { throw ExitCode.failure }
        }

        func render(_ report: Report, problems: [ConfigError]) -> String {
            var out = ""
            for problem in problems { out += "\(problem)\n" }
            if let nodes = report.nodes {
                out += "\(file): \(problems.isEmpty ? "OK" : "loads"): \(nodes) node\(nodes == 1 ? "" : "s"), "
                    + "\(report.ranges ?? 0) range\(report.ranges == 1 ? "" : "s"), \(report.groups ?? 0) group\(report.groups == 1 ? "" : "s")\n"
            } else {
                out += "\(file): \(problems.count) error\(problems.count == 1 ? "" : "s")\n"
            }
            guard let drift = report.published else {
                if report.nodes != nil { out += "\(root): nothing published to compare with\n" }
                return out
            }
            if drift.isEmpty {
                out += "\(root): generation \(drift.generation) publishes exactly this inventory\n"
                return out
            }
            out += "\(root): generation \(drift.generation) differs (run 'imagebuild publish --root \(root) --nodes \(file)'):\n"
            for line in drift.added { out += "  added    \(line)\n" }
            for line in drift.removed { out += "  removed  \(line)\n" }
            for line in drift.changed { out += "  changed  \(line)\n" }
            return out
        }
    }
}

extension NodesCommand {
    struct KnownHostsCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "known-hosts",
            abstract: "Print an ssh_known_hosts for every node, generating the host keys nodes lack.",
            discussion: """
                Nodes boot from RAM, so the boot server keeps their SSH host keys and hands
                them to each node at every boot: a node keeps its keys across reboots and NIC
                changes, and users' known_hosts stay valid. This prints one line per key of
                every node in the inventory, to install as /etc/ssh/ssh_known_hosts where
                users ssh from:
                  node001,node001.cluster.local,10.77.0.11 ssh-ed25519 AAAA...
                (the second name when network.domain is set, the address when the node has a
                fixed ip). Nodes whose ssh_host_keys is none are left out.

                The keys live in STATE_DIR/host-keys/<hostname>/, with STATE_DIR found as
                'imagebuild serve' finds it: --state-dir, else state_dir in --config, else
                /var/lib/imagebuild. Nodes without keys get them first, once (stderr says how
                many): run this after adding nodes, so they do not wait for RSA keys at their
                first boot. Run it as the user the server runs as, or as root: keys made by
                root are given to the owner of host-keys/.

                With --ca CA.pub it prints '@cert-authority NAMES CA' for each node instead
                (or one line for --ca-hosts): ssh then trusts any host certificate that CA
                signed for those names, and a node whose keys are replaced needs no new line.
                No keys are generated.
                """)

        @Option(help: "The node inventory (default: 'nodes' in --config, else nodes.yaml).")
        var nodes: String?

        @Option(help: "imagebuild serve's settings file (server.yaml): its state_dir and nodes are used.")
        var config: String?

        @Option(help: "The server's state directory, where host keys are kept (default: state_dir in --config, else /var/lib/imagebuild).")
        var stateDir: String?

        @Option(help: "A host CA's public key file: print @cert-authority lines instead of the nodes' keys.")
        var ca: String?

        @Option(help: "With --ca: one @cert-authority line for these comma-separated host patterns (e.g. '*.cluster.local') instead of one per node.")
        var caHosts: String?

        @Option(help: "ssh-keygen runs at a time while generating keys (default: the number of CPUs).")
        var jobs: Int?

        func validate() throws {
            if let caHosts {
                if ca == nil { throw ValidationError("--ca-hosts needs --ca") }
                if caHosts.isEmpty || caHosts.contains(where: \.isWhitespace) { throw ValidationError("--ca-hosts takes patterns separated by commas, without spaces") }
            }
            if let jobs, jobs < 1 { throw ValidationError("--jobs must be at least 1") }
        }

        func run() throws {
            var flags = ServerConfigFile()
            flags.nodes = nodes
            flags.stateDirectory = stateDir
            let settings: ServerConfigFile, inventory: Inventory
            do {
                settings = try ServerConfigFile.merged(flags: flags, configPath: config)
                inventory = try InventoryLoader.load(path: settings.nodes ?? "nodes.yaml")
            } catch {
                fail(error)
            }
            let skipped = KnownHosts.hostnamesWithoutKeys(in: inventory)
            let nodes = KnownHosts.nodes(of: inventory, skipping: skipped)
            let domain = inventory.network.domain
            var out = "# ssh_known_hosts for the nodes of \(inventory.file) (imagebuild nodes known-hosts)\n"
            if skipped.count > 0 {
                FileHandle.standardError.write(Data("left out \(inventory.nodes.count - nodes.count) nodes with ssh_host_keys: none\n".utf8))
            }
            if let ca {
                let caLine = Self.readCAPublicKey(ca)
                if let caHosts {
                    out += KnownHosts.certificateAuthorityLine(patterns: caHosts.split(separator: ",").map(String.init), caPublicKey: caLine) + "\n"
                } else {
                    for node in nodes {
                        out += KnownHosts.certificateAuthorityLine(patterns: KnownHosts.names(of: node, domain: domain), caPublicKey: caLine) + "\n"
                    }
                }
                print(out, terminator: "")
                return
            }
            let store = HostKeyStore(directory: HostKeyStore.directory(inStateDirectory: settings.resolvedStateDirectory))
            do {
                let start = Date()
                let generated = try store.ensureKeys(for: nodes.map(\.hostname),
                                                     concurrency: jobs ?? ProcessInfo.processInfo.activeProcessorCount)
                if generated > 0 {
                    let seconds = String(format: "%.1f", Date().timeIntervalSince(start))
                    FileHandle.standardError.write(Data("generated host keys for \(generated) node\(generated == 1 ? "" : "s") in \(store.directory) (\(seconds) s)\n".utf8))
                }
                for node in nodes {
                    for line in KnownHosts.lines(names: KnownHosts.names(of: node, domain: domain), keys: try store.keys(for: node.hostname)) {
                        out += line + "\n"
                    }
                }
            } catch {
                fail(error)
            }
            print(out, terminator: "")
        }

        /// The CA's public key line; its private key or a certificate given by mistake is refused.
        static func readCAPublicKey(_ path: String) -> String {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                fail(ValidationError("cannot read the CA public key \(path)"))
            }
            if text.contains("PRIVATE KEY") { fail(ValidationError("\(path) is a private key: --ca wants the CA's public key (the .pub file)")) }
            let line = text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.first { !$0.isEmpty && !$0.hasPrefix("#") } ?? ""
            guard HostKey.fingerprint(ofPublicKey: line) != nil, !line.split(separator: " ")[0].hasSuffix("-cert-v01@openssh.com") else {
                fail(ValidationError("\(path) is not an SSH public key"))
            }
            return line
        }
    }
}

/// Pretty, sorted JSON on standard output (the `--json` of every command).
func printJSON(_ value: some Encodable) {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    do {
        FileHandle.standardOutput.write(try encoder.encode(value) + Data("\n".utf8))
    } catch {
        fail(error)
    }
}
