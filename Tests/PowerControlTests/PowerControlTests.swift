import Foundation
import ImageBuildKit
import Testing
import TestSupport
@testable import PowerControl

/// Free ports for the simulators: bound, read, released (a BMC binds them a moment later).
func freePort(_ kind: PortHolder.Kind) throws -> Int { try PortHolder(kind, host: "127.0.0.1").port }

func temporaryDirectory(_ name: String) -> String {
    let path = NSTemporaryDirectory() + "ib-power-\(name)-\(UUID().uuidString.prefix(8))"
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// Runs `body` with a controller and shuts it down after, as AsyncHTTPClient requires.
func withController<T>(timeout: Duration, _ body: (PowerController) async throws -> T) async throws -> T {
    let controller = PowerController(timeout: timeout)
    do {
        let value = try await body(controller)
        await controller.shutdown()
        return value
    } catch {
        await controller.shutdown()
        throw error
    }
}

/// Polls `body` until it is true (a BMC applies power changes a few seconds after it answers).
func eventually(timeout: Double, _ body: () async throws -> Bool) async throws -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    repeat {
        if try await body() { return true }
        try await Task.sleep(for: .milliseconds(300))
    } while Date() < deadline
    return false
}

/// IPMI against OpenIPMI's ipmi_sim on loopback, through ipmitool, as `imagebuild power` does it.
@Suite("IPMI through ipmitool against ipmi_sim", .serialized,
       .enabled(if: IPMISimulator.unavailableReason == nil, "\(IPMISimulator.unavailableReason ?? "")"))
struct IPMIPowerTests {
    @Test("status, on, one-time network boot with the EFI flag, cycle, reset, off")
    func powerCycleWithNetworkBoot() async throws {
        let dir = temporaryDirectory("ipmi")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let bmc = try IPMISimulator(directory: dir, port: try freePort(.udp), password: "ipmi-\(UUID().uuidString.prefix(8))")
        defer { bmc.stop() }
        // Cipher suite 3: ipmi_sim does not answer ipmitool's cipher-suite question, which costs 5 s a
        // command otherwise (the status below asks without it once, to show that works too).
        let target = BMCTarget(hostname: "n1", address: "127.0.0.1", protocol: .ipmi, port: bmc.port, user: bmc.user,
                               passwordFile: bmc.passwordFile, bootMode: .uefi, cipherSuite: 3)
        try await withController(timeout: .seconds(15)) { (controller: PowerController) async throws in
            let entry = PowerController.Entry(node: "n1", target: .success(target))

            var negotiating = target
            negotiating.cipherSuite = nil
            let status = await controller.run(.status, on: [.init(node: "n1", target: .success(negotiating))], networkBoot: false, parallel: 1)
            #expect(status == [PowerResult(node: "n1", bmc: "ipmi://admin@127.0.0.1:\(bmc.port)", action: .status, ok: true, state: .off,
                                           seconds: status[0].seconds)])

            let on = await controller.run(.on, on: [entry], networkBoot: true, parallel: 1)
            #expect(on[0].ok && on[0].networkBoot && on[0].done == "powered on", "\(on)")
            // The BMC got the one-time boot device (ipmitool's EFI flag travels in the same parameter),
            // then the power-on, which consumed it.
            #expect(bmc.requests == ["boot pxe", "power 1"], "\(bmc.requests)")
            let client = IPMIToolClient(target: target, timeout: .seconds(15))
            #expect(try await client.powerState() == .on)

            let cycled = await controller.run(.cycle, on: [entry], networkBoot: false, parallel: 1)
            #expect(cycled[0].ok && cycled[0].state == .on && cycled[0].done == "power-cycled", "\(cycled)")
            // ipmi_sim powers off, then on again a second later.
            #expect(try await eventually(timeout: 10) { bmc.requests.suffix(2) == ["power 0", "power 1"] }, "\(bmc.requests)")

            let reset = await controller.run(.reset, on: [entry], networkBoot: false, parallel: 1)
            #expect(reset[0].ok && reset[0].done == "reset", "\(reset)")
            #expect(bmc.requests.last == "reset 1", "\(bmc.requests)")

            let off = await controller.run(.off, on: [entry], networkBoot: false, parallel: 1)
            #expect(off[0].ok && off[0].done == "powered off", "\(off)")
            #expect(try await client.powerState() == .off)
            let again = await controller.run(.off, on: [entry], networkBoot: false, parallel: 1)
            #expect(again[0].ok && again[0].done == "already off", "\(again)")
            let resetOff = await controller.run(.reset, on: [entry], networkBoot: false, parallel: 1)
            #expect(!resetOff[0].ok && resetOff[0].errorKind == .refused, "\(resetOff)")
            // ipmitool had the password as a file, never as an argument.
            #expect(!client.sessionArguments.contains(bmc.password) && client.sessionArguments.contains(bmc.passwordFile))
        }
    }

    @Test("a wrong password, an unknown user, a silent BMC and a readable password file: each its own reason")
    func failuresAreNamed() async throws {
        let dir = temporaryDirectory("ipmi-faults")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let bmc = try IPMISimulator(directory: dir, port: try freePort(.udp), password: "right-\(UUID().uuidString.prefix(8))")
        defer { bmc.stop() }
        let wrong = dir + "/wrong", open = dir + "/open"
        try "not-the-password\n".write(toFile: wrong, atomically: true, encoding: .utf8)
        chmod(wrong, 0o600)
        try "whatever\n".write(toFile: open, atomically: true, encoding: .utf8)
        chmod(open, 0o644)
        let silent = try PortHolder(.udp, host: "127.0.0.1")  // receives, never answers: a hung BMC
        func entry(_ name: String, user: String = "admin", port: Int, file: String) -> PowerController.Entry {
            .init(node: name, target: .success(BMCTarget(hostname: name, address: "127.0.0.1", protocol: .ipmi, port: port,
                                                         user: user, passwordFile: file, cipherSuite: 3)))
        }
        try await withController(timeout: .seconds(15)) { (controller: PowerController) async throws in
            let results = await controller.run(.status, on: [
                entry("good", port: bmc.port, file: bmc.passwordFile),
                entry("badpass", port: bmc.port, file: wrong),
                entry("baduser", user: "mallory", port: bmc.port, file: bmc.passwordFile),
                entry("silent", port: silent.port, file: bmc.passwordFile),
                entry("readable", port: bmc.port, file: open),
                .init(node: "noconfig", target: .failure(BMCError(.config, "nodes.yaml:9:5: node noconfig has no bmc address"))),
            ], networkBoot: false, parallel: 6)
            let byNode = Dictionary(uniqueKeysWithValues: results.map { ($0.node, $0) })
            #expect(byNode["good"]?.ok == true && byNode["good"]?.state == .off, "\(results)")
            #expect(byNode["badpass"]?.errorKind == .auth && byNode["badpass"]?.error?.contains("password") == true, "\(results)")
            #expect(byNode["baduser"]?.errorKind == .auth && byNode["baduser"]?.error?.contains("user") == true, "\(results)")
            #expect(byNode["silent"]?.errorKind == .unreachable, "\(results)")
            #expect(byNode["readable"]?.errorKind == .config && byNode["readable"]?.error == "password file \(open) has mode 0644: others can read it (chmod 600 \(open))", "\(results)")
            #expect(byNode["noconfig"]?.errorKind == .config, "\(results)")
            let text = String(decoding: try JSONEncoder().encode(results), as: UTF8.self) + PowerTable.render(results)
            #expect(!text.contains(bmc.password) && !text.contains("not-the-password"), "a password leaked: \(text)")
        }
    }
}

/// Redfish against sushy-tools' emulator over HTTPS, through AsyncHTTPClient.
@Suite("Redfish against sushy-tools", .serialized,
       .enabled(if: RedfishSimulator.unavailableReason == nil, "\(RedfishSimulator.unavailableReason ?? "")"))
struct RedfishPowerTests {
    @Test("status, a one-time PXE boot in UEFI mode, on, cycle, off; the emulator saw each request")
    func powerWithNetworkBoot() async throws {
        let dir = temporaryDirectory("redfish")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let bmc = try RedfishSimulator(directory: dir, port: try freePort(.tcp), password: "rf-\(UUID().uuidString.prefix(8))")
        defer { bmc.stop() }
        let target = BMCTarget(hostname: "n1", address: "127.0.0.1", protocol: .redfish, port: bmc.port, user: bmc.user,
                               passwordFile: bmc.passwordFile, tls: .pinned(bmc.certificate), bootMode: .uefi)
        try await withController(timeout: .seconds(15)) { (controller: PowerController) async throws in
            let entry = PowerController.Entry(node: "n1", target: .success(target))
            let client = try controller.client(for: target)

            let status = await controller.run(.status, on: [entry], networkBoot: false, parallel: 1)
            #expect(status[0].ok && status[0].state == .off, "\(status)")
            let on = await controller.run(.on, on: [entry], networkBoot: true, parallel: 1)
            #expect(on[0].ok && on[0].networkBoot && on[0].done == "powered on", "\(on)")
            let resource = try bmc.system(bmc.systems[0])
            let boot = resource["Boot"] as? [String: Any]
            #expect(boot?["BootSourceOverrideTarget"] as? String == "Pxe" && boot?["BootSourceOverrideMode"] as? String == "UEFI", "\(resource)")
            // The emulator's access log: the boot override (PATCH of the system), then the reset action.
            let system = "/redfish/v1/Systems/\(bmc.systems[0])"
            func requests(_ line: String) -> Int {
                // werkzeug colours some lines: drop the escape sequences first.
                let log = bmc.log.replacingOccurrences(of: "\u{1B}\\[[0-9;]*m", with: "", options: .regularExpression)
                return log.components(separatedBy: "\"\(line) HTTP/1.1\" 204").count - 1
            }
            #expect(requests("PATCH \(system)") == 1 && requests("POST \(system)/Actions/ComputerSystem.Reset") == 1, "\(bmc.log.suffix(2000))")
            // The emulator applies power changes 1 to 11 s later, as hardware does.
            #expect(try await eventually(timeout: 20) { try await client.powerState() == .on })

            let cycled = await controller.run(.cycle, on: [entry], networkBoot: false, parallel: 1)
            #expect(cycled[0].ok && cycled[0].done == "power-cycled", "\(cycled)")
            #expect(requests("POST \(system)/Actions/ComputerSystem.Reset") == 2, "\(bmc.log.suffix(2000))")
            #expect(try await eventually(timeout: 20) { try await client.powerState() == .on })

            let off = await controller.run(.off, on: [entry], networkBoot: false, parallel: 1)
            #expect(off[0].ok && off[0].done == "powered off", "\(off)")
            #expect(requests("POST \(system)/Actions/ComputerSystem.Reset") == 3 && requests("PATCH \(system)") == 1, "\(bmc.log.suffix(2000))")
            #expect(try await eventually(timeout: 20) { try await client.powerState() == .off })
            #expect(!bmc.log.contains(bmc.password))
        }
    }

    @Test("a wrong password, an unchecked certificate, a refused port, a BMC that hangs: each named, the good one unharmed")
    func failuresAreNamed() async throws {
        let dir = temporaryDirectory("redfish-faults")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let bmc = try RedfishSimulator(directory: dir, port: try freePort(.tcp), password: "rf-\(UUID().uuidString.prefix(8))", systems: 2)
        defer { bmc.stop() }
        let wrong = dir + "/wrong"
        try "not-the-password\n".write(toFile: wrong, atomically: true, encoding: .utf8)
        chmod(wrong, 0o600)
        let hung = try PortHolder(.tcp, host: "127.0.0.1")  // accepts (backlog), never answers
        let refused = try freePort(.tcp)
        func entry(_ name: String, port: Int, file: String? = nil, tls: BMCTLS? = nil, system: String? = "first") -> PowerController.Entry {
            .init(node: name, target: .success(BMCTarget(
                hostname: name, address: "127.0.0.1", protocol: .redfish, port: port, user: bmc.user, passwordFile: file ?? bmc.passwordFile,
                system: system == "first" ? bmc.systems[0] : system, tls: tls ?? .pinned(bmc.certificate))))
        }
        try await withController(timeout: .seconds(4)) { (controller: PowerController) async throws in
            let results = await controller.run(.status, on: [
                entry("good", port: bmc.port),
                entry("insecure", port: bmc.port, tls: .insecure),
                entry("badpass", port: bmc.port, file: wrong),
                entry("unpinned", port: bmc.port, tls: .verify),
                entry("refused", port: refused),
                entry("hung", port: hung.port),
                entry("twosystems", port: bmc.port, system: nil),
            ], networkBoot: false, parallel: 7)
            let byNode = Dictionary(uniqueKeysWithValues: results.map { ($0.node, $0) })
            #expect(byNode["good"]?.ok == true && byNode["good"]?.state == .off, "\(results)")
            #expect(byNode["insecure"]?.ok == true, "\(results)")
            #expect(byNode["badpass"]?.errorKind == .auth && byNode["badpass"]?.error?.contains("HTTP 401") == true, "\(results)")
            #expect(byNode["unpinned"]?.errorKind == .tls, "\(results)")
            #expect(byNode["refused"]?.errorKind == .unreachable, "\(results)")
            #expect(byNode["hung"]?.errorKind == .timeout && (byNode["hung"]?.seconds ?? 99) < 10, "\(results)")
            #expect(byNode["twosystems"]?.errorKind == .config && byNode["twosystems"]?.error?.contains("set bmc.system") == true, "\(results)")
            let text = String(decoding: try JSONEncoder().encode(results), as: UTF8.self) + PowerTable.render(results)
            #expect(!text.contains(bmc.password) && !text.contains("not-the-password"), "a password leaked: \(text)")
        }
    }
}
