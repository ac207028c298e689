@testable import BootServer
import Foundation
import BootProtocols
@testable import ImageBuildKit
import Testing
import TestSupport

/// `GET /cloud-init/<mac>/<document>` on a live HTTPService: who gets an answer (the secrets' address
/// rule), what it is (the library's documents, byte for byte), what the timeline and the metrics
/// record; then Debian's cloud-init itself seeded from it.
@Suite("cloud-init NoCloud datasource", .serialized)
struct CloudInitRouteTests {
    static func inventory(server: String = "127.0.0.1", port: Int = 8080, nodeIP: String = "127.0.0.5") throws -> Inventory {
        try InventoryLoader.parse("""
            network:
              server: \(server)
              subnet: 127.0.0.0/8
              http_port: \(port)
              domain: cluster.test
            defaults:
              image: compute
              vars: {site: lab}
              cloud_init:
                enabled: true
                user_data: |
                  #cloud-config
                  write_files:
                    - path: /etc/imagebuild-proof
                      content: "{{hostname}} at {{vars.site}}\\n"
            nodes:
              - mac: "52:54:00:77:00:01"
                hostname: node001
                ip: \(nodeIP)
                interfaces:
                  - {name: ib0, address: 10.78.0.11/16, gateway: 10.78.0.1, mtu: 2044}
                  - {mac: "52:54:00:88:00:01", name: data0, address: 192.168.5.11/24}
              - {mac: "52:54:00:77:00:02", hostname: node002, ip: 127.0.0.6, cloud_init: {enabled: false}}
              - {mac: "52:54:00:77:00:03", hostname: node003}
            """, file: "nodes.yaml")
    }

    static let node001 = MACAddress(0x52, 0x54, 0, 0x77, 0, 1)
    static let node003 = MACAddress(0x52, 0x54, 0, 0x77, 0, 3)

    static func get(_ port: Int, _ path: String, from source: String) async throws -> RawResponse {
        let head = "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        return try RawHTTP.parse(try await RawHTTP.exchangeTimed(port: port, chunks: [head], from: source).bytes)
    }

    @Test("the node's own address gets its four documents; another address 403 with the reason; the rest 404")
    func answers() async throws {
        let root = try HTTPTestRoot()
        defer { root.cleanup() }
        let inventory = try Self.inventory()
        // node003 has no fixed address: its live lease is what ties it to 127.0.0.7.
        let leases = BoundLeaseIndex()
        leases.bind(Self.node003, IPv4Address(127, 0, 0, 7), until: DHCPTimestamp(secondsSinceEpoch: Int64(time(nil)) + 3600))
        try await withHTTPService(root: root, inventory: InventoryBox(inventory), leases: leases) { port, service in
            let expected = try CloudInit.documents(for: try inventory.identity(of: inventory.node(mac: Self.node001)!),
                                                   network: inventory.network, templates: NodeTemplates(inventory: inventory))
            let base = "/cloud-init/52-54-00-77-00-01/"
            for name in CloudInit.documentNames {
                let response = try await Self.get(port, base + name, from: "127.0.0.5")
                #expect(response.status == 200, "\(name): \(response.text)")
                #expect(response.body == expected.document(named: name), "\(name): \(response.text)")
                #expect(response.header("cache-control") == "no-store")
            }
            #expect(try await Self.get(port, base + "user-data", from: "127.0.0.5").text.contains("content: \"node001 at lab\\n\""))

            let refused = try await Self.get(port, base + "user-data", from: "127.0.0.9")
            #expect(refused.status == 403)
            #expect(refused.text == "not from the node's address: 127.0.0.9 asked for node001 (its address is 127.0.0.5)\n", "\(refused.text)")
            #expect(try await Self.get(port, "/cloud-init/52-54-00-77-00-03/meta-data", from: "127.0.0.7").status == 200, "by lease")
            let off = try await Self.get(port, "/cloud-init/52-54-00-77-00-02/meta-data", from: "127.0.0.6")
            #expect(off.status == 404 && off.text.contains("cloud-init is off for node002"), "\(off.text)")
            for (path, reason) in [(base + "secrets", "no cloud-init document 'secrets'"),
                                   ("/cloud-init/52:54:00:77:00:01/meta-data", "is not a node's MAC"),
                                   ("/cloud-init/52-54-00-77-00-99/meta-data", "52:54:00:77:00:99 is not a node in nodes.yaml")] {
                let response = try await Self.get(port, path, from: "127.0.0.5")
                #expect(response.status == 404 && response.text.contains(reason), "\(path): \(response.status) \(response.text)")
            }

            // One transfer per document served, and the refusal, on the node's timeline; no stage moves.
            let events = service.timeline.events(for: Self.node001)
            let served = events.compactMap { event -> String? in
                guard case .transfer(.http, let path, _, _, .completed) = event.observation, event.source == IPv4Address(127, 0, 0, 5) else { return nil }
                return path
            }
            #expect(served.filter { $0.hasPrefix("cloud-init/52-54-00-77-00-01/") }.count == 5, "\(served)")
            #expect(events.contains { if case .transfer(_, _, _, _, .refused(let why)) = $0.observation { why.contains("127.0.0.9") } else { false } })
            #expect((service.timeline.node(Self.node001)?.stage ?? .unseen) == .unseen, "cloud-init data is no step of a boot")

            let metrics = try await RawHTTP.get(port: port, "/metrics").text
            #expect(metrics.contains(#"imagebuild_http_requests_total{route="cloud-init",code="2xx"} 6"#), "\(metrics)")
            #expect(metrics.contains(#"imagebuild_http_requests_total{route="cloud-init",code="4xx"} 5"#))
        }
    }

    // MARK: Debian's cloud-init against the server

    static let unavailable: String? = {
        if geteuid() != 0 { return "needs root (mount and UTS namespaces)" }
        return ProcessRunner.missing(["cloud-init", "unshare", "hostname"])
    }()

    /// cloud-init as a node runs it, with every path it writes hidden from the host: private mount and
    /// UTS namespaces, an overlay over /etc and tmpfs over /run and /var, /dev/console bound to
    /// /dev/null. It shares the host's network (it only talks to the server on loopback), so its
    /// network configuration is rendered but never brought up (`disable_network_activation`).
    static let script = """
        set -eu
        work=$1
        mount -t tmpfs scratch "$work/mnt"
        mkdir "$work/mnt/upper" "$work/mnt/work"
        mount -t overlay etc -o "lowerdir=/etc,upperdir=$work/mnt/upper,workdir=$work/mnt/work" /etc
        mount -t tmpfs run /run
        mount -t tmpfs var /var
        mkdir -p /var/lib/cloud /var/log /var/tmp
        mount --bind /dev/null /dev/console
        rm -f /etc/cloud/cloud.cfg.d/*.cfg /etc/systemd/network/10-cloud-init-*
        cp "$work/cloud.cfg" /etc/cloud/cloud.cfg
        hostname before-cloud-init
        DEBUG_PROC_CMDLINE=$(cat "$work/cmdline")
        export DEBUG_PROC_CMDLINE
        for stage in "init --local" "init" "modules --mode=config" "modules --mode=final"; do
          echo "== cloud-init $stage"
          cloud-init $stage
        done
        out=$work/out
        hostname > "$out/uts-hostname"
        cp /etc/hostname "$out/etc-hostname"
        cp /etc/imagebuild-proof /var/lib/cloud/data/instance-id /run/cloud-init/result.json "$out/"
        cp -r /etc/systemd/network "$out/networkd"
        """

    /// Only the modules the proof needs: nothing that touches disks, users, packages or the network.
    static let cloudConfig = """
        datasource_list: [NoCloud, None]
        disable_network_activation: true
        preserve_hostname: false
        system_info:
          distro: debian
          network: {renderers: [networkd]}
          paths: {cloud_dir: /var/lib/cloud/, templates_dir: /etc/cloud/templates/}
        cloud_init_modules: [write_files, set_hostname, update_hostname]
        cloud_config_modules: []
        cloud_final_modules: [final_message]

        """

    @Test("Debian's cloud-init seeded by the node's own command line: hostname, a user-data file and the network config applied",
          .enabled(if: unavailable == nil, "\(unavailable ?? "")"))
    func debianCloudInit() async throws {
        let root = try HTTPTestRoot()
        let work = NSTemporaryDirectory() + "cloud-init-" + UUID().uuidString
        defer { root.cleanup(); try? FileManager.default.removeItem(atPath: work) }
        for folder in ["mnt", "out"] { try FileManager.default.createDirectory(atPath: work + "/" + folder, withIntermediateDirectories: true) }
        try Self.script.write(toFile: work + "/run.sh", atomically: true, encoding: .utf8)
        try Self.cloudConfig.write(toFile: work + "/cloud.cfg", atomically: true, encoding: .utf8)
        func hostname() throws -> String { try String(contentsOfFile: "/proc/sys/kernel/hostname", encoding: .utf8) }
        let hostBefore = try hostname()
        // The server is 127.0.0.2 and the node 127.0.0.1: the address a connection to 127.0.0.2 comes from.
        let box = InventoryBox(nil)
        try await withHTTPService(root: root, inventory: box, leases: BoundLeaseIndex(), configure: { $0.host = "127.0.0.2" }) { port, service in
            let inventory = try Self.inventory(server: "127.0.0.2", port: port, nodeIP: "127.0.0.1")
            box.set(inventory)
            let plan = BootPlan(inventory: inventory, images: ["compute": Self.image])
            guard case .boot(let target, _) = plan.answer(mac: Self.node001, ip: nil) else { Issue.record("node001 boots nothing"); return }
            let cmdline = plan.renderer.kernelCommandLine(target)
            #expect(cmdline.contains(" ds=nocloud-net;s=http://127.0.0.2:\(port)/cloud-init/52-54-00-77-00-01/"), "\(cmdline)")
            try cmdline.write(toFile: work + "/cmdline", atomically: true, encoding: .utf8)

            let result = try await ProcessRunner.run("unshare", ["--uts", "--mount", "--propagation", "private", "--", "/bin/sh", work + "/run.sh", work],
                                                     environment: ["PYTHONDONTWRITEBYTECODE": "1"], timeout: 300)
            try #require(result.status == 0, "cloud-init in the namespace failed (\(result.status)):\n\(result.output.suffix(6000))")
            func out(_ name: String) throws -> String { try String(contentsOfFile: work + "/out/" + name, encoding: .utf8) }
            // The hostname: set in the namespace and written to /etc/hostname (the short name of the FQDN served).
            #expect(try out("uts-hostname") == "node001\n")
            #expect(try out("etc-hostname") == "node001\n")
            // The user-data file, rendered from the template by the server.
            #expect(try out("imagebuild-proof") == "node001 at lab\n")
            let served = try CloudInit.documents(for: try inventory.identity(of: inventory.node(mac: Self.node001)!),
                                                 network: inventory.network, templates: NodeTemplates(inventory: inventory))
            #expect(try out("instance-id") == served.instanceID + "\n")
            let status = try out("result.json")
            #expect(status.contains("DataSourceNoCloudNet [seed=cmdline,http://127.0.0.2:\(port)/cloud-init/52-54-00-77-00-01/]"), "\(status)")
            #expect(status.contains(#""errors": []"#), "\(status)")
            // The network config, rendered by cloud-init's networkd renderer: ib0 with its address and gateway
            // (cloud-init 22.4 takes it from meta-data's network-interfaces, 24.3 and later from network-config).
            let ib0 = try out("networkd/10-cloud-init-ib0.network")
            #expect(ib0.contains("Name=ib0") && ib0.contains("Address=10.78.0.11/16") && ib0.contains("Gateway=10.78.0.1"), "\(ib0)")

            let fetched = service.timeline.events(for: Self.node001).compactMap { event -> String? in
                guard case .transfer(.http, let path, _, _, .completed) = event.observation, event.source == IPv4Address(127, 0, 0, 1) else { return nil }
                return path.split(separator: "/").last.map(String.init)
            }
            #expect(Set(fetched).isSuperset(of: ["meta-data", "user-data", "vendor-data"]), "\(fetched)")
        }
        #expect(try hostname() == hostBefore, "the host's hostname is untouched")
        #expect(!FileManager.default.fileExists(atPath: "/etc/imagebuild-proof") && !FileManager.default.fileExists(atPath: "/var/lib/cloud/data"))
    }

    static let image: PublishedImage = {
        let manifest = Manifest(name: "compute", toolVersion: "t", recipeDigest: "r", inputDigest: nil, sourceDateEpoch: 0,
                                kernelVersion: "6.1.0", cmdline: "console=ttyS0 imagebuild.sha256=aa", imageFormat: "tar.gz",
                                initramfsCompression: "gzip", modules: [], files: ["image.tar.gz": .init(sha256: "aa", size: 1)])
        return PublishedImage(manifest: manifest)
    }()
}
