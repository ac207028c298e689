import BootServer
import Foundation
import ImageBuildKit
import Logging
import Testing

@Suite("server.yaml")
struct ServerConfigFileTests {
    static let full = """
        root: boot
        nodes: /etc/imagebuild/nodes.yaml
        listen: 10.77.0.1
        interface: eth1
        state_dir: state
        log: {format: json, level: debug}
        inventory: {poll_interval: 0}
        dhcp:
          port: 1067
          proxy: false
          ignore_unknown_clients: true
          rapid_commit: false
          offer_hold_time: 30
          decline_hold_time: 600
          pxelinux_reboot_time: 0
          rate_limit: {burst: 10, per_second: 2.5}
        tftp: {enabled: false, port: 1069}
        http: {port: 8080, max_connections: 100}
        """

    @Test("every key parses; relative paths resolve against the file's folder")
    func parsesEverything() throws {
        let c = try ServerConfigFile.parse(Self.full, file: "server.yaml", folder: "/srv/ib")
        #expect(c.root == "/srv/ib/boot" && c.nodes == "/etc/imagebuild/nodes.yaml" && c.stateDirectory == "/srv/ib/state")
        #expect(c.listen == "10.77.0.1" && c.interface == "eth1")
        #expect(c.logFormat == "json" && c.logLevel == .debug && c.inventoryPollInterval == 0)
        #expect(c.dhcp.port == 1067 && c.dhcp.proxy == false && c.dhcp.ignoreUnknownClients == true && c.dhcp.rapidCommit == false)
        #expect(c.dhcp.offerHoldTime == 30 && c.dhcp.declineHoldTime == 600 && c.dhcp.pxelinuxRebootTime == 0)
        #expect(c.dhcp.rateLimitBurst == 10 && c.dhcp.rateLimitPerSecond == 2.5)
        #expect(c.tftp.enabled == false && c.tftp.port == 1069 && c.http.port == 8080 && c.http.maximumConnections == 100)
        let dhcp = c.applyDHCP(to: DHCPServerConfiguration(stateDirectory: "/x"))
        #expect(dhcp.ignoreUnknownClients && !dhcp.rapidCommit && dhcp.offerHoldTime == 30 && dhcp.rateLimitPerSecond == 2.5)
        // 0 sends nothing (pxelinux keeps its 300 s); unset keeps the 30 s default; a value is taken.
        #expect(dhcp.pxelinuxRebootTime == nil)
        #expect(ServerConfigFile().applyDHCP(to: DHCPServerConfiguration(stateDirectory: "/x")).pxelinuxRebootTime == 30)
        let ten = try ServerConfigFile.parse("dhcp: {pxelinux_reboot_time: 10}\n", file: "server.yaml", folder: "/tmp")
        #expect(ten.applyDHCP(to: DHCPServerConfiguration(stateDirectory: "/x")).pxelinuxRebootTime == 10)
    }

    @Test("the state directory: --state-dir over state_dir over the default, the same for serve and nodes known-hosts")
    func stateDirectory() throws {
        let folder = NSTemporaryDirectory() + "ib-state-rule-\(getpid())"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try "state_dir: state\n".write(toFile: folder + "/server.yaml", atomically: true, encoding: .utf8)
        var flags = ServerConfigFile()
        #expect(try ServerConfigFile.merged(flags: flags, configPath: nil).resolvedStateDirectory == "/var/lib/imagebuild")
        let fromFile = try ServerConfigFile.merged(flags: flags, configPath: folder + "/server.yaml")
        #expect(fromFile.resolvedStateDirectory == URL(fileURLWithPath: folder + "/state").standardizedFileURL.path)
        flags.stateDirectory = "/srv/state"
        let fromFlag = try ServerConfigFile.merged(flags: flags, configPath: folder + "/server.yaml")
        #expect(fromFlag.resolvedStateDirectory == "/srv/state")
        let settings = try BootServices.Settings.load(flags: flags, configPath: folder + "/server.yaml")
        #expect(settings.stateDirectory == "/srv/state")
        #expect(settings.hostKeyDirectory == "/srv/state/host-keys")
        #expect(try BootServices.Settings.load(flags: ServerConfigFile(), configPath: nil).hostKeyDirectory == "/var/lib/imagebuild/host-keys")
    }

    @Test("contrib/server.yaml, the commented example of every key, loads")
    func contribExample() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../../contrib/server.yaml").standardizedFileURL.path
        let c = try ServerConfigFile.load(path: path)
        #expect(c.dhcp.pxelinuxRebootTime == 30 && c.dhcp.rapidCommit == true)
        #expect(c.swarm.seed == true && c.swarm.seedPort == 6881)
    }

    @Test("mistakes are located errors", arguments: [
        ("dhcp:\n  rapid_comit: true\n", "server.yaml:2:3: unknown key 'rapid_comit' (did you mean 'rapid_commit'?)"),
        ("log: {level: loud}\n", "server.yaml:1:14: unknown log level 'loud'"),
        ("http:\n  port: 70000\n", "server.yaml:2:9: 70000 is out of range 1...65535"),
        ("dhcp: {pxelinux_reboot_time: -1}\n", "server.yaml:1:30: -1 is out of range 0...86400"),
        ("listen: 10.0.0\n", "server.yaml:1:9: '10.0.0' is not an IPv4 address"),
        ("inventory: {poll_interval: soon}\n", "server.yaml:1:28: expected a number, found 'soon'"),
        ("root: [a\n", "server.yaml:2:1: YAML syntax"),
    ])
    func locatedErrors(text: String, expected: String) {
        #expect {
            _ = try ServerConfigFile.parse(text, file: "server.yaml", folder: "/tmp")
        } throws: { error in
            "\(error)".hasPrefix(expected)
        }
    }

    @Test("flags win over the file; unset keys come from the file")
    func flagsOverride() throws {
        let file = try ServerConfigFile.parse(Self.full, file: "server.yaml", folder: "/srv/ib")
        var flags = ServerConfigFile()
        flags.logLevel = .warning
        flags.http.port = 9090
        let merged = flags.overriding(file)
        #expect(merged.logLevel == .warning && merged.http.port == 9090)
        #expect(merged.dhcp.port == 1067 && merged.root == "/srv/ib/boot")
    }

    @Test("a reload tells the keys it can apply from those that need a restart")
    func changes() throws {
        let old = try ServerConfigFile.parse(Self.full, file: "server.yaml", folder: "/srv/ib")
        let edited = Self.full.replacingOccurrences(of: "level: debug", with: "level: info")
            .replacingOccurrences(of: "rapid_commit: false", with: "rapid_commit: true")
            .replacingOccurrences(of: "pxelinux_reboot_time: 0", with: "pxelinux_reboot_time: 20")
            .replacingOccurrences(of: "port: 8080", with: "port: 8081")
        let new = try ServerConfigFile.parse(edited, file: "server.yaml", folder: "/srv/ib")
        let (applied, restart) = new.changes(from: old)
        #expect(applied == ["log.level", "dhcp.rapid_commit", "dhcp.pxelinux_reboot_time"])
        #expect(restart == ["http.port"])
        #expect(old.changes(from: old).reloadable.isEmpty && old.changes(from: old).needRestart.isEmpty)
    }

    @Test("a reload takes exactly the reloadable keys from the new file")
    func takingReloadable() throws {
        let running = ServerConfigFile()
        let next = try ServerConfigFile.parse(Self.full, file: "server.yaml", folder: "/srv/ib")
        let reloaded = running.takingReloadable(from: next)
        // Everything the file sets differs from an empty configuration; only the reloadable keys moved.
        #expect(Set(reloaded.changes(from: running).reloadable) == Set(next.changes(from: running).reloadable))
        #expect(reloaded.changes(from: running).needRestart.isEmpty)
        #expect(next.changes(from: reloaded).reloadable.isEmpty)
    }
}

@Suite("SIGHUP")
struct HangupSignalTests {
    @Test("a real SIGHUP to this process reaches the observer on the signal thread, and never kills it")
    func realSignal() async throws {
        let calls = DHCPBox<Int>()
        let token = try HangupSignal.observe { calls.append(1) }
        defer { token.cancel() }
        let before = HangupSignal.received
        kill(getpid(), SIGHUP)
        let clock = ContinuousClock()
        let start = clock.now
        while calls.all.isEmpty && clock.now - start < .seconds(10) { try await Task.sleep(for: .milliseconds(10)) }
        #expect(calls.all.count >= 1, "the observer was not called within 10 s")
        #expect(HangupSignal.received > before)

        // More signals (the kernel may merge ones that arrive while one is pending): the observer runs
        // again, and none of them is fatal.
        for _ in 0..<5 {
            kill(getpid(), SIGHUP)
            try await Task.sleep(for: .milliseconds(20))
        }
        while calls.all.count < 2 && clock.now - start < .seconds(20) { try await Task.sleep(for: .milliseconds(10)) }
        #expect(HangupSignal.received >= before + 2)
        #expect(calls.all.count >= 2)
    }
}
