import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Real BMCs for tests: OpenIPMI's `ipmi_sim` (Debian `openipmi`) speaking IPMI 2.0 over LAN, and
/// sushy-tools' Redfish emulator (PyPI, installed by scripts/setup into `.venv-test/`). Both are
/// stopped by PID when released.

/// `ipmi_sim` with one BMC on `address:port` (UDP), user `admin`. Its chassis control is a shell
/// script (`chassis_control` in lan.conf) that keeps the power state and the boot device in files of
/// `directory`, appends every request to `requests`, and, when `vmStart` is given, runs that command
/// at power-on (it must write the VM's PID to `directory/vm.pid`) and kills that PID at power-off.
/// The boot device is one-time, as on a real BMC: power-on hands it to `vmStart` as `$BOOT`
/// (`pxe`, `default`, ...) and clears it.
public final class IPMISimulator: @unchecked Sendable {
    public let directory: String
    public let port: Int
    public let address: String
    public let user = "admin"
    public let password: String
    public let passwordFile: String
    public let process: BackgroundProcess

    public static var unavailableReason: String? { ProcessRunner.missing(["ipmi_sim", "ipmitool"]) }

    /// `start`: how to run ipmi_sim (a `NamespaceLab.start` in a namespace); default: here.
    public init(directory: String, address: String = "127.0.0.1", port: Int, password: String, vmStart: String? = nil,
                start: ((String, [String]) throws -> BackgroundProcess)? = nil) throws {
        self.directory = directory
        self.address = address
        self.port = port
        self.password = password
        try FileManager.default.createDirectory(atPath: directory + "/state", withIntermediateDirectories: true)
        passwordFile = directory + "/bmc-password"
        try (password + "\n").write(toFile: passwordFile, atomically: true, encoding: .utf8)
        chmod(passwordFile, 0o600)
        if let vmStart {
            try ("#!/bin/sh\n" + vmStart + "\n").write(toFile: directory + "/vm-start", atomically: true, encoding: .utf8)
            chmod(directory + "/vm-start", 0o755)
        }
        let chassis = directory + "/chassis"
        try Self.chassisScript(directory).write(toFile: chassis, atomically: true, encoding: .utf8)
        chmod(chassis, 0o755)
        try """
            name "imagebuild-test"
            set_working_mc 0x20
              startlan 1
                addr \(address) \(port)
                priv_limit admin
                allowed_auths_callback none md2 md5 straight
                allowed_auths_user none md2 md5 straight
                allowed_auths_operator none md2 md5 straight
                allowed_auths_admin none md2 md5 straight
                guid a123456789abcdefa123456789abcdef
              endlan
              chassis_control "\(chassis)"
              user 1 true  ""        "unused" user     10       none md2 md5 straight
              user 2 true  "\(user)" "\(password)" admin    10       none md2 md5 straight

            """.write(toFile: directory + "/lan.conf", atomically: true, encoding: .utf8)
        try """
            mc_setbmc 0x20
            mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
            sel_enable 0x20 1000 0x0a
            mc_enable 0x20

            """.write(toFile: directory + "/bmc.emu", atomically: true, encoding: .utf8)
        let arguments = ["-c", directory + "/lan.conf", "-f", directory + "/bmc.emu", "-s", directory + "/state", "-n"]
        if let start {
            process = try start("ipmi_sim", [ProcessRunner.which("ipmi_sim") ?? "/usr/bin/ipmi_sim"] + arguments)
        } else {
            process = try BackgroundProcess("/usr/bin/ipmi_sim", arguments, log: directory + "/ipmi_sim.log")
        }
        // ipmi_sim prints nothing when its LAN socket is up: wait until it answers a session.
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if !process.isRunning { throw ProcessError("ipmi_sim exited:\n\(process.log.suffix(2000))") }
            if start == nil, (try? ipmitool(["chassis", "power", "status"]).status) == 0 { return }
            if start != nil { return }  // in a namespace the caller checks from inside it
            usleep(200_000)
        }
        throw ProcessError("ipmi_sim does not answer on \(address):\(port):\n\(process.log.suffix(2000))")
    }

    /// ipmitool against this BMC with its own credentials (for checks from the test's side).
    public func ipmitool(_ command: [String]) throws -> ProcessResult {
        try ProcessRunner.run("ipmitool", ["-I", "lanplus", "-H", address, "-p", String(port), "-U", user, "-f", passwordFile,
                                           "-N", "1", "-R", "2"] + command, timeout: 30)
    }

    /// Every `set` the BMC received (`power 1`, `boot pxe`, `reset 1`), oldest first.
    public var requests: [String] {
        ((try? String(contentsOfFile: directory + "/requests", encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }

    /// The VM's PID while one runs.
    public var vmPID: pid_t? {
        guard let text = try? String(contentsOfFile: directory + "/vm.pid", encoding: .utf8), let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)),
              kill(pid, 0) == 0 else { return nil }
        return pid
    }

    /// Stops the simulator and any VM it started, by PID.
    public func stop() {
        process.stop()
        if let pid = vmPID {
            kill(pid, SIGKILL)
            _ = ProcessRunner.waitGone(pid, timeout: 10)
        }
    }

    deinit { stop() }

    /// ipmi_sim runs `chassis get NAME...` (answering `NAME:VALUE` lines) and `chassis set NAME "VALUE"...`.
    static func chassisScript(_ dir: String) -> String {
        """
        #!/bin/sh
        # Chassis control for ipmi_sim (lan.conf chassis_control): power and boot device in files.
        dir='\(dir)'
        running() { [ -f "$dir/vm.pid" ] && kill -0 "$(cat "$dir/vm.pid")" 2>/dev/null; }
        power_on() {
          boot=$(cat "$dir/boot" 2>/dev/null || echo default)
          echo default > "$dir/boot"
          if [ -x "$dir/vm-start" ]; then
            running || BOOT=$boot "$dir/vm-start" >> "$dir/vm-start.log" 2>&1
          fi
          echo 1 > "$dir/power"
        }
        power_off() {
          if running; then kill -9 "$(cat "$dir/vm.pid")"; rm -f "$dir/vm.pid"; fi
          echo 0 > "$dir/power"
        }
        op=$1; shift
        case $op in
        get)
          for name in "$@"; do
            case $name in
            power)
              if [ -x "$dir/vm-start" ]; then
                if running; then echo power:1; else echo power:0; fi
              else
                echo "power:$(cat "$dir/power" 2>/dev/null || echo 0)"
              fi ;;
            boot) echo "boot:$(cat "$dir/boot" 2>/dev/null || echo default)" ;;
            esac
          done ;;
        set)
          while [ $# -ge 2 ]; do
            name=$1; value=$2; shift 2
            echo "$name $value" >> "$dir/requests"
            case $name in
            power) if [ "$value" = 1 ]; then power_on; else power_off; fi ;;
            reset) power_off; power_on ;;
            boot) echo "$value" > "$dir/boot" ;;
            esac
          done ;;
        check) ;;
        esac
        exit 0
        """
    }
}

/// sushy-tools' Redfish emulator (`sushy-emulator --fake`: systems held in memory, power changes
/// applied 1 to 11 s after the request, as on real hardware) over HTTPS with a self-signed
/// certificate for `127.0.0.1` and HTTP Basic authentication.
public final class RedfishSimulator: @unchecked Sendable {
    public let directory: String
    public let port: Int
    public let user = "admin"
    public let password: String
    public let passwordFile: String
    /// The emulator's certificate (PEM): pin it.
    public let certificate: String
    /// The fake systems' ids (UUIDs), in order.
    public let systems: [String]
    public let process: BackgroundProcess

    /// The test virtualenv scripts/setup makes (`.venv-test/` at the package root).
    public static let venv: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path + "/.venv-test"
    }()

    public static var unavailableReason: String? {
        if !FileManager.default.isExecutableFile(atPath: venv + "/bin/sushy-emulator") {
            return "sushy-emulator is not in \(venv) (scripts/setup installs it)"
        }
        return ProcessRunner.missing(["openssl"])
    }

    public init(directory: String, port: Int, password: String, systems count: Int = 1, listen: String = "127.0.0.1") throws {
        self.directory = directory
        self.port = port
        self.password = password
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        passwordFile = directory + "/bmc-password"
        try (password + "\n").write(toFile: passwordFile, atomically: true, encoding: .utf8)
        chmod(passwordFile, 0o600)
        certificate = directory + "/bmc.pem"
        let key = directory + "/bmc.key"
        let made = try ProcessRunner.run("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                                                     "-nodes", "-days", "2", "-subj", "/CN=bmc.test", "-addext", "subjectAltName=IP:\(listen)",
                                                     "-keyout", key, "-out", certificate], timeout: 60)
        guard made.status == 0 else { throw ProcessError("openssl: \(made.stderr)") }
        let python = Self.venv + "/bin/python"
        let hash = try ProcessRunner.run(python, ["-c", "import bcrypt,sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt(4)).decode())", password], timeout: 60)
        guard hash.status == 0 else { throw ProcessError("bcrypt: \(hash.stderr)") }
        try "\(user):\(hash.stdout.trimmingCharacters(in: .whitespacesAndNewlines))\n".write(toFile: directory + "/htpasswd", atomically: true, encoding: .utf8)
        systems = (0..<count).map { String(format: "5a1e0000-0000-4000-8000-%012d", $0) }
        let fakeSystems = systems.enumerated().map { index, uuid in
            "{'uuid': '\(uuid)', 'name': 'node\(index)', 'power_state': 'Off', 'nics': [{'mac': '52:54:00:99:\(String(format: "%02x:%02x", index / 256, index % 256))', 'ip': '10.0.0.1'}]}"
        }.joined(separator: ",\n    ")
        try """
            SUSHY_EMULATOR_FAKE_DRIVER = True
            SUSHY_EMULATOR_FAKE_SYSTEMS = [
                \(fakeSystems)
            ]
            SUSHY_EMULATOR_AUTH_FILE = '\(directory)/htpasswd'
            SUSHY_EMULATOR_LISTEN_IP = '\(listen)'
            SUSHY_EMULATOR_LISTEN_PORT = \(port)
            SUSHY_EMULATOR_SSL_CERT = '\(certificate)'
            SUSHY_EMULATOR_SSL_KEY = '\(key)'
            SUSHY_EMULATOR_STATE_DIR = '\(directory)/state'

            """.write(toFile: directory + "/sushy.conf", atomically: true, encoding: .utf8)
        process = try BackgroundProcess(Self.venv + "/bin/sushy-emulator", ["--config", directory + "/sushy.conf", "--fake"],
                                        log: directory + "/sushy.log")
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            if !process.isRunning { throw ProcessError("sushy-emulator exited:\n\(process.log.suffix(2000))") }
            if (try? ProcessRunner.run("curl", ["-sk", "-o", "/dev/null", "-w", "%{http_code}", "https://\(listen):\(port)/redfish/v1/"], timeout: 10).stdout) == "200" {
                return
            }
            usleep(200_000)
        }
        throw ProcessError("sushy-emulator does not answer on \(listen):\(port):\n\(process.log.suffix(2000))")
    }

    /// A system's resource as the emulator serves it now.
    public func system(_ id: String) throws -> [String: Any] {
        let result = try ProcessRunner.run("curl", ["-sk", "-u", "\(user):\(password)", "https://127.0.0.1:\(port)/redfish/v1/Systems/\(id)"], timeout: 20)
        guard let object = try JSONSerialization.jsonObject(with: result.stdoutData) as? [String: Any] else {
            throw ProcessError("no system \(id): \(result.output.prefix(300))")
        }
        return object
    }

    /// The emulator's log: it names each request and each change it made.
    public var log: String { process.log }

    public func stop() { process.stop() }
    deinit { stop() }
}

extension ProcessRunner {
    /// Waits until `pid` is gone (not ours to reap: a daemonised grandchild). True when it is.
    public static func waitGone(_ pid: pid_t, timeout: Double) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while kill(pid, 0) == 0 && Date() < deadline { usleep(50_000) }
        return kill(pid, 0) != 0
    }
}
