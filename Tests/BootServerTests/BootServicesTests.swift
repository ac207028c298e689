import BootProtocols
@testable import BootServer
import Foundation
import ImageBuildKit
import Logging
import NIOCore
import Prometheus
import TestSupport
import Testing

/// The whole server in this process: settings resolved once, DHCP, TFTP and HTTP bound on loopback
/// (a busy port, port 0), a reload that picks up nodes.yaml and server.yaml, and a graceful shutdown.
/// (`ServeReloadTests` drives the same through the binary and real signals.) Serialized: a port one
/// test frees to check it is unbound could otherwise be taken meanwhile by another's port 0.
@Suite("BootServices: the server assembled, reloaded and stopped in process", .serialized)
struct BootServicesTests {
    @Test("defaults are applied once, and a combination that cannot run is refused")
    func settings() throws {
        let defaults = try BootServices.Settings(ServerConfigFile())
        #expect(defaults.root == "tftpboot" && defaults.nodes == "nodes.yaml" && !defaults.nodesNamed)
        #expect(defaults.listen == "0.0.0.0" && defaults.stateDirectory == "/var/lib/imagebuild")
        #expect(defaults.dhcpPort == 67 && defaults.tftpPort == 69 && defaults.httpPort == nil)
        #expect(defaults.dhcp && defaults.tftp && defaults.http && !defaults.proxyDHCP && !defaults.reportTokens)
        #expect(defaults.pollInterval == 0.5 && defaults.logLevel == .info && defaults.logFormat == "text")

        var off = ServerConfigFile()
        off.dhcp.enabled = false
        off.tftp.enabled = false
        off.http.enabled = false
        #expect(throws: StartupError.self) { try BootServices.Settings(off) }
        var proxy = ServerConfigFile()
        proxy.dhcp.enabled = false
        proxy.dhcp.proxy = true
        #expect(throws: StartupError.self) { try BootServices.Settings(proxy) }

        // Flags win over the file.
        let file = try ServerConfigFile.parse("root: /srv/boot\ntftp: {port: 6969}\n", file: "server.yaml", folder: "/etc")
        var flags = ServerConfigFile()
        flags.tftp.port = 1069
        let merged = try BootServices.Settings(flags.overriding(file))
        #expect(merged.root == "/srv/boot" && merged.tftpPort == 1069)
    }

    @Test("a missing boot root is a start-up error that says what to run")
    func missingRoot() async throws {
        var flags = ServerConfigFile()
        flags.root = "/nonexistent/root"
        let settings = try BootServices.Settings(flags)
        await #expect(throws: StartupError.self) {
            _ = try await BootServices(settings: settings, flags: flags, configPath: nil, logLevel: LogLevelControl(.info),
                                       metrics: PrometheusCollectorRegistry())
        }
    }

    @Test("TFTP and HTTP serve, a reload applies nodes.yaml and server.yaml, shutdown returns")
    func serveReloadShutdown() async throws {
        let fixture = try HTTPTestRoot()
        defer { fixture.cleanup() }
        let nodes = fixture.base + "/nodes.yaml"
        let config = fixture.base + "/server.yaml"
        let inventory = """
            network: {server: 127.0.0.1, subnet: 127.0.0.0/8, http_port: 8080}
            nodes:
              - {mac: "52:54:00:aa:00:01", hostname: alpha, image: compute}

            """
        try inventory.write(toFile: nodes, atomically: true, encoding: .utf8)
        try "log: {level: info}\ninventory: {poll_interval: 0}\n".write(toFile: config, atomically: true, encoding: .utf8)
        var flags = ServerConfigFile()
        flags.root = fixture.root
        flags.nodes = nodes
        flags.stateDirectory = fixture.state
        flags.listen = "127.0.0.1"
        flags.dhcp.enabled = false
        flags.tftp.port = 0
        flags.http.port = 0
        let level = LogLevelControl(.info)
        let settings = try BootServices.Settings.load(flags: flags, configPath: config)
        #expect(settings.pollInterval == 0)
        let services = try await BootServices(settings: settings, flags: flags, configPath: config, logLevel: level,
                                              metrics: PrometheusCollectorRegistry(), loggers: { _ in quietLogger })
        #expect(services.dhcp == nil && services.tftp != nil && services.http != nil)
        let tftpPort = try #require(services.tftpAddress?.port)

        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await services.run(signals: false) }
            let port = try #require(services.httpAddress?.port)

            // Both protocols serve the root.
            let file = try await RawHTTP.get(port: port, "/pxelinux.cfg/default")
            #expect(file.status == 200 && String(decoding: file.body, as: UTF8.self) == "DEFAULT imagebuild\n")
            let tftp = try await runCommand(["curl", "-sS", "tftp://127.0.0.1:\(tftpPort)/pxelinux.cfg/default"], timeoutSeconds: 20)
            #expect(tftp.status == 0 && tftp.output == "DEFAULT imagebuild\n", "\(tftp.output)")

            // nodes.yaml and server.yaml change; one reload applies both.
            let stranger = "/boot/v1/bootscript?mac=52:54:00:aa:00:02"
            #expect(String(decoding: try await RawHTTP.get(port: port, stranger).body, as: UTF8.self).contains("not registered"))
            try (inventory + "  - {mac: \"52:54:00:aa:00:02\", hostname: beta, image: compute}\n")
                .write(toFile: nodes, atomically: true, encoding: .utf8)
            try "log: {level: debug}\ninventory: {poll_interval: 0}\n".write(toFile: config, atomically: true, encoding: .utf8)
            services.requestReload()
            #expect(await eventually { level.level == .debug && services.inventory?.current.inventory.nodes.count == 2 })
            #expect(String(decoding: try await RawHTTP.get(port: port, stranger).body, as: UTF8.self).contains("beta (52:54:00:aa:00:02) boots compute"))

            // A broken server.yaml is rejected; the level in force stays.
            try "log: {level: loud}\n".write(toFile: config, atomically: true, encoding: .utf8)
            await services.reload()
            #expect(level.level == .debug)

            await services.shutdown()
            try await tasks.waitForAll()
        }
    }

    /// Flags for all three services on 127.0.0.1 (DHCP on `lo`) over `fixture`, with the given ports.
    static func loopbackFlags(_ fixture: HTTPTestRoot, dhcp: Int, tftp: Int, http: Int) throws -> ServerConfigFile {
        let nodes = fixture.base + "/nodes.yaml"
        try "network: {server: 127.0.0.1, subnet: 127.0.0.0/8, http_port: 8080}\nnodes: []\n"
            .write(toFile: nodes, atomically: true, encoding: .utf8)
        var flags = ServerConfigFile()
        flags.root = fixture.root
        flags.nodes = nodes
        flags.stateDirectory = fixture.state
        flags.listen = "127.0.0.1"
        flags.inventoryPollInterval = 0
        flags.dhcp.port = dhcp
        flags.tftp.port = tftp
        flags.http.port = http
        return flags
    }

    /// Where each service binds with `--listen 127.0.0.1`: DHCP on the wildcard address (bound to `lo`).
    static let sockets: [String: (kind: PortHolder.Kind, host: String)] = [
        "DHCP": (.udp, "0.0.0.0"), "TFTP": (.udp, "127.0.0.1"), "HTTP": (.tcp, "127.0.0.1"),
    ]

    @Test("a port in use stops the start: the error names the service, its port and flag, and nothing stays bound",
          arguments: ["DHCP", "TFTP", "HTTP"])
    func busyPort(_ busy: String) async throws {
        let fixture = try HTTPTestRoot()
        defer { fixture.cleanup() }
        // Free ports from the kernel; the busy service's stays held by this socket, as another server's would.
        var holders = try Self.sockets.mapValues { try PortHolder($0.kind, host: $0.host) }
        let ports = holders.mapValues(\.port)
        for name in Self.sockets.keys where name != busy { holders[name] = nil }
        let flags = try Self.loopbackFlags(fixture, dhcp: ports["DHCP"]!, tftp: ports["TFTP"]!, http: ports["HTTP"]!)

        let error = await #expect(throws: StartupError.self) {
            _ = try await BootServices(settings: try BootServices.Settings(flags), flags: flags, configPath: nil,
                                       logLevel: LogLevelControl(.info), metrics: PrometheusCollectorRegistry(), loggers: { _ in quietLogger })
        }
        let message = error?.description ?? ""
        #expect(message.hasPrefix("\(busy): cannot listen on 127.0.0.1:\(ports[busy]!): the port is in use"), "\(message)")
        #expect(message.hasSuffix("choose another port with --\(busy.lowercased())-port"), "\(message)")
        // Services bound before the failing one (TFTP, then DHCP, then HTTP) closed their sockets.
        for (name, socket) in Self.sockets where name != busy {
            #expect(PortHolder.canBind(socket.kind, host: socket.host, port: ports[name]!),
                    "\(name)'s port \(ports[name]!) is still bound after \(busy) failed")
        }
        withExtendedLifetime(holders) {}
    }

    @Test("proxyDHCP's port 4011 in use: the error names 4011 and no flag, since no flag moves it")
    func busyProxyPort() {
        let error = DHCPServerError.socket("bind", interface: nil, port: 4011, errno: EADDRINUSE)
        let message = StartupError.bind(error, service: "DHCP", host: "10.0.0.1", port: 67, flag: "--dhcp-port").description
        #expect(message.hasPrefix("DHCP: cannot listen on 10.0.0.1:4011: the port is in use"), "\(message)")
        #expect(message.contains("proxyDHCP") && !message.contains("--dhcp-port"), "\(message)")
        let denied = StartupError.bind(DHCPServerError.socket("bind", interface: nil, port: 4011, errno: EACCES),
                                       service: "DHCP", host: "10.0.0.1", port: 67, flag: "--dhcp-port").description
        #expect(denied.contains("privileges") && !denied.contains("--dhcp-port"), "\(denied)")
        // The service's own port keeps its flag.
        let own = StartupError.bind(DHCPServerError.socket("bind", interface: nil, port: 67, errno: EADDRINUSE),
                                    service: "DHCP", host: "10.0.0.1", port: 67, flag: "--dhcp-port").description
        #expect(own.hasSuffix("choose another port with --dhcp-port"), "\(own)")
    }

    @Test("with port 0 each service reports the port it bound, reads nothing before run(), and serves on it")
    func ephemeralPorts() async throws {
        let fixture = try HTTPTestRoot()
        defer { fixture.cleanup() }
        let flags = try Self.loopbackFlags(fixture, dhcp: 0, tftp: 0, http: 0)
        let services = try await BootServices(settings: try BootServices.Settings(flags), flags: flags, configPath: nil,
                                              logLevel: LogLevelControl(.info), metrics: PrometheusCollectorRegistry(), loggers: { _ in quietLogger })
        let dhcpPort = try #require(services.dhcpAddresses.first?.port)
        let tftpPort = try #require(services.tftpAddress?.port)
        let httpPort = try #require(services.httpAddress?.port)
        #expect(dhcpPort != 0 && tftpPort != 0 && httpPort != 0)
        #expect(Set([dhcpPort, tftpPort]).count == 2, "DHCP and TFTP share UDP: two sockets, two ports")

        // Bound, not yet run: a DISCOVER waits in the socket.
        let dhcp = try #require(services.dhcp)
        try PortHolder.send(encodedDHCP(dhcpDiscover(MACAddress(0x52, 0x54, 0, 0xaa, 0, 9))), toLoopbackPort: dhcpPort)
        try await Task.sleep(for: .milliseconds(200))
        #expect(try await dhcp.statistics().received == 0)

        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await services.run(signals: false) }
            #expect(await eventually { (try? await dhcp.statistics().received) == 1 }, "the waiting DISCOVER was not read")
            let file = try await RawHTTP.get(port: httpPort, "/pxelinux.cfg/default")
            #expect(file.status == 200 && file.text == "DEFAULT imagebuild\n")
            let tftp = try await runCommand(["curl", "-sS", "tftp://127.0.0.1:\(tftpPort)/pxelinux.cfg/default"], timeoutSeconds: 20)
            #expect(tftp.status == 0 && tftp.output == "DEFAULT imagebuild\n", "\(tftp.output)")
            await services.shutdown()
            try await tasks.waitForAll()
        }
        // Shut down: every port can be bound again.
        #expect(PortHolder.canBind(.udp, host: "0.0.0.0", port: dhcpPort))
        #expect(PortHolder.canBind(.udp, host: "127.0.0.1", port: tftpPort))
        #expect(PortHolder.canBind(.tcp, host: "127.0.0.1", port: httpPort))
    }
}

private func encodedDHCP(_ message: DHCPMessage) throws -> [UInt8] {
    var buffer = ByteBuffer()
    try message.encode(into: &buffer)
    return Array(buffer.readableBytesView)
}
