import Foundation
import Synchronization
import Testing
import TestSupport
@testable import ImageBuildKit

/// Stage 1's overlay step, run for real: `/load_img.sh` as the binary carries it, after `/init`'s
/// own settings, command-line parsing and say/step/report/fail (its text up to its first step),
/// in busybox sh, in a chroot laid out as the initramfs is (static busybox and its applets,
/// imagebuild-fetch and its libraries), in private mount and PID namespaces, against a server on
/// 127.0.0.1 that serves the image, the overlay and the secrets and records the stage reports.
///
/// What is not the node's: the kernel command line is a file bound over /proc/cmdline, the network
/// step of /init is replaced by its result (loopback), /sys/class/dmi/id is a folder of files, and
/// the run stops where stage 1 would switch_root (it copies the root's /etc out first); `reboot`
/// is a function that ends the run (and the PID namespace would keep a real one from the host).
@Suite("Stage 1's overlay step, run in a chroot", .serialized)
struct StageOneOverlayTests {
    static let unavailable: String? = getuid() != 0 ? "needs root (chroot, namespaces, a privileged port)"
        : ProcessRunner.missing(["unshare", "chroot", "bsdtar", "busybox"])

    /// One file of a tar: path relative to the root, as the protocol has them.
    struct File {
        var path: String
        var text: String
        var mode: String
        var uid = 0, gid = 0
        var uname: String? = nil
    }

    /// A chroot laid out as the initramfs, the image, the node files and the server.
    final class Node {
        let dir = TemporaryDirectory("stage1-overlay")
        var chroot: String { dir.path + "/initramfs" }
        /// What the server answers to a GET, by path.
        final class Routes: Sendable {
            let table = Mutex<[String: ScriptedHTTPServer.Response]>([:])
        }
        let routes = Routes()
        let server: ScriptedHTTPServer
        var image = Data()

        init() throws {
            let routes = self.routes
            server = try ScriptedHTTPServer { request in
                if request.method == "POST" { return ScriptedHTTPServer.Response(status: 202, reason: "Accepted") }
                return routes.table.withLock { $0[request.path] } ?? .text(404, "Not Found", "no such file")
            }
            try layOutInitramfs()
            image = try makeImage()
        }

        deinit { server.stop() }

        /// busybox with its applets (but reboot, halt and poweroff), the loader with its
        /// libraries, /load_img.sh; an /etc/passwd whose `daemon` is 2, so a tar's user names
        /// mapped through stage 1's own would show.
        private func layOutInitramfs() throws {
            let fm = FileManager.default
            let busybox = try HostBusybox.path()
            for folder in ["bin", "usr/bin", "proc", "dev", "tmp", "out", "etc", "sys/class/dmi/id"] {
                try fm.createDirectory(atPath: chroot + "/" + folder, withIntermediateDirectories: true)
            }
            try fm.copyItem(atPath: busybox, toPath: chroot + "/bin/busybox")
            for applet in try HostBusybox.applets(of: busybox) where applet != "/bin/busybox" {
                if ["reboot", "halt", "poweroff"].contains((applet as NSString).lastPathComponent) { continue }
                try fm.createDirectory(atPath: chroot + (applet as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                try fm.createSymbolicLink(atPath: chroot + applet, withDestinationPath: "/bin/busybox")
            }
            try StageOneLoader.install(at: chroot + StageOneLoader.initramfsPath)
            for entry in try StageOneLoader.libraries() {
                try fm.createDirectory(atPath: chroot + (entry.path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                switch entry {
                case .file(let path): try fm.copyItem(atPath: path, toPath: chroot + path)
                case .symlink(let path, let target): try fm.createSymbolicLink(atPath: chroot + path, withDestinationPath: target)
                }
            }
            try StageOneScripts.loadImageScript.write(toFile: chroot + "/load_img.sh", atomically: false, encoding: .utf8)
            try "root:x:0:0::/:/bin/sh\ndaemon:x:2:2::/:/bin/false\n".write(toFile: chroot + "/etc/passwd", atomically: false, encoding: .utf8)
            try "root:x:0:\ndaemon:x:2:\n".write(toFile: chroot + "/etc/group", atomically: false, encoding: .utf8)
            _ = fm.createFile(atPath: chroot + "/dev/null", contents: nil)
        }

        /// A busybox stage 2: its own chown and names (munge is 105:107), /etc/hostname "image",
        /// /etc/ssh and /etc/munge (0700, munge's) already there.
        private func makeImage() throws -> Data {
            let root = dir.path + "/image"
            let fm = FileManager.default
            for folder in ["bin", "sbin", "etc/ssh", "etc/munge"] {
                try fm.createDirectory(atPath: root + "/" + folder, withIntermediateDirectories: true)
            }
            try fm.copyItem(atPath: try HostBusybox.path(), toPath: root + "/bin/busybox")
            for applet in ["sh", "chown"] { try fm.createSymbolicLink(atPath: root + "/bin/" + applet, withDestinationPath: "busybox") }
            try fm.createSymbolicLink(atPath: root + "/sbin/init", withDestinationPath: "../bin/busybox")
            try "root:x:0:0::/root:/bin/sh\nmunge:x:105:107::/:/bin/false\n".write(toFile: root + "/etc/passwd", atomically: false, encoding: .utf8)
            try "root:x:0:\nmunge:x:107:\n".write(toFile: root + "/etc/group", atomically: false, encoding: .utf8)
            try "image\n".write(toFile: root + "/etc/hostname", atomically: false, encoding: .utf8)
            chmod(root + "/etc/munge", 0o700)
            chown(root + "/etc/munge", 105, 107)
            let file = dir.path + "/image.tar.gz"
            let result = try ProcessRunner.run("bsdtar", ["-czf", file, "--numeric-owner", "-C", root, "."], timeout: 60)
            try #require(result.status == 0, "\(result.output)")
            return try Data(contentsOf: URL(fileURLWithPath: file))
        }

        /// A tar.gz of `files` with exactly their modes, ids and names (an mtree spec for bsdtar).
        func tar(_ name: String, _ files: [File]) throws -> Data {
            let staging = dir.path + "/" + name + ".files"
            try FileManager.default.createDirectory(atPath: staging, withIntermediateDirectories: true)
            var spec = "#mtree\n"
            for (index, file) in files.enumerated() {
                let content = staging + "/\(index)"
                try file.text.write(toFile: content, atomically: false, encoding: .utf8)
                let owner = file.uname.map { " uname=\($0) gname=\($0)" } ?? ""
                spec += "\(file.path.replacingOccurrences(of: " ", with: "\\040")) type=file mode=\(file.mode) uid=\(file.uid) gid=\(file.gid)\(owner) contents=\(content)\n"
            }
            try spec.write(toFile: staging + ".mtree", atomically: false, encoding: .utf8)
            let out = dir.path + "/" + name
            let result = try ProcessRunner.run("bsdtar", [name.hasSuffix(".xz") ? "-cJf" : "-czf", out, "@" + staging + ".mtree"], timeout: 60)
            try #require(result.status == 0, "\(result.output)")
            return try Data(contentsOf: URL(fileURLWithPath: out))
        }

        func serve(_ path: String, _ response: ScriptedHTTPServer.Response) { routes.table.withLock { $0[path] = response } }

        /// SMBIOS values as the kernel shows them (trailing newline), in the chroot's /sys.
        func smbios(_ values: [String: String]) throws {
            for (name, value) in values {
                try value.write(toFile: chroot + "/sys/class/dmi/id/" + name, atomically: false, encoding: .utf8)
            }
        }

        /// Runs /init's first part and /load_img.sh with this kernel command line, up to switch_root.
        func boot(_ cmdline: String) throws -> ProcessResult {
            try (cmdline + "\n").write(toFile: chroot + "/cmdline", atomically: false, encoding: .utf8)
            try harness().write(toFile: chroot + "/harness.sh", atomically: false, encoding: .utf8)
            let enter = """
                set -e
                mount -t proc proc "$1/proc"
                mount --bind "$1/cmdline" "$1/proc/cmdline"
                mount --bind /dev/null "$1/dev/null"
                exec chroot "$1" /bin/sh /harness.sh
                """
            return try ProcessRunner.run("unshare", ["--mount", "--pid", "--fork", "/bin/sh", "-c", enter, "sh", chroot], timeout: 120)
        }

        /// /init from its defaults to its first step (settings, command line, say/step/report/fail),
        /// then what its network step would have found, then /load_img.sh.
        private func harness() throws -> String {
            let lines = StageOneScripts.initScript.components(separatedBy: "\n")
            let first = try #require(lines.firstIndex { $0.hasPrefix("ONFAIL=") }, "/init sets no ONFAIL default")
            let last = try #require(lines.firstIndex { $0.hasPrefix("step kernel") }, "/init has no 'step kernel'")
            return """
                #!/bin/sh
                export PATH=/sbin:/bin:/usr/sbin:/usr/bin
                \(lines[first..<last].joined(separator: "\n"))
                # The test's: no delay, no reboot, the network step's result, a stop before switch_root.
                ONFAIL_DELAY=0
                reboot() { say "(the test ends the run here)"; exit 1; }
                IFACE=lo MAC=52:54:00:77:00:11 IP=127.0.0.1 PREFIX=8 ROUTER='' HOSTNAME=node011
                step() {
                    STEP="$1"; shift; say "[$STEP] $*"
                    # at switch_root: the root's /etc copied out, the queued reports sent as stage 1's next report would
                    [ "$STEP" != switch-root ] || { cp -a "$ROOT/etc" /out/etc; ls -A /tmp > /out/tmp.txt; report switch-root "$NEWINIT"; exit 0; }
                }
                . /load_img.sh

                """
        }

        /// The command line: the image (its sha256), the server for reports, `extra`.
        func cmdline(_ extra: String) -> String {
            serve("/image.tar.gz", .ok(image))
            return "imagebuild.image=\(server.base)/image.tar.gz imagebuild.sha256=\(Self.hex(image)) imagebuild.format=tar.gz "
                + "imagebuild.rootsize=64m imagebuild.retries=2 imagebuild.server=\(server.base) " + extra
        }

        /// The stage reports posted, as "stage detail", a batch's in its order.
        var reports: [String] {
            server.requests.filter { $0.method == "POST" }.flatMap { request -> [String] in
                guard let object = try? JSONSerialization.jsonObject(with: request.body) as? [String: Any] else { return ["?"] }
                let events = object["events"] as? [[String: Any]] ?? [object]
                return events.map { "\($0["stage"] as? String ?? "?") \($0["detail"] as? String ?? "")" }
            }
        }

        /// How many POSTs carried them.
        var reportPosts: Int { server.requests.filter { $0.method == "POST" }.count }

        /// mode, uid:gid of a file the run copied out of the root's /etc.
        func modeAndOwner(_ path: String) -> String? {
            var info = stat()
            guard lstat(chroot + "/out/" + path, &info) == 0 else { return nil }
            return String(format: "%o %d:%d", info.st_mode & 0o7777, info.st_uid, info.st_gid)
        }

        func text(_ path: String) -> String? { try? String(contentsOfFile: chroot + "/out/" + path, encoding: .utf8) }

        static func hex(_ data: Data) -> String {
            let file = NSTemporaryDirectory() + "stage1-overlay-" + UUID().uuidString
            defer { unlink(file) }
            _ = FileManager.default.createFile(atPath: file, contents: data)
            return (try? sha256File(file).digest) ?? "?"
        }
    }

    @Test("the overlay and the secrets are laid over the root with their modes and numeric owners, the owners file is applied, the tars are gone",
          .enabled(if: unavailable == nil, "needs root, unshare, chroot, bsdtar and busybox"))
    func laysFilesOverTheRoot() throws {
        let node = try Node()
        let overlay = try node.tar("overlay.tar.gz", [
            File(path: "etc/hostname", text: "node011\n", mode: "0644"),
            // A user name in the tar that stage 1's own /etc/passwd knows as another uid: the number counts.
            File(path: "etc/node notes", text: "rack 4\n", mode: "0640", uid: 4242, gid: 4343, uname: "daemon"),
            File(path: "etc/imagebuild/owners", text: "munge etc/node notes\n", mode: "0644"),
        ])
        let secrets = try node.tar("secrets.tar.gz", [
            File(path: "etc/ssh/ssh_host_ed25519_key", text: "-----BEGIN OPENSSH PRIVATE KEY-----\n", mode: "0600"),
            File(path: "etc/munge/munge.key", text: "munge key\n", mode: "0400"),
            File(path: "etc/imagebuild/owners", text: "munge:munge etc/munge/munge.key\n", mode: "0644"),
        ])
        // Overlays are content-addressed: the name is the sha256 stage 1 checks. Two archives, laid in order,
        // one xz'd as publish makes large shared ones.
        let shared = try node.tar("shared.tar.xz", [File(path: "etc/hosts", text: "10.77.0.11 node011\n", mode: "0644")])
        node.serve("/overlays/\(Node.hex(shared)).tar.xz", .ok(shared))
        node.serve("/overlays/\(Node.hex(overlay)).tar.gz", .ok(overlay))
        node.serve("/boot/v1/secrets", .ok(secrets))
        try node.smbios(["product_uuid": "4C4C4544-0042-3510-8052-B4C04F4B4D32\n", "product_serial": "  CZ\u{7}2134XY \n",
                         "chassis_asset_tag": " \n"])
        let result = try node.boot(node.cmdline("imagebuild.overlay=\(node.server.base)/overlays/\(Node.hex(shared)).tar.xz,"
            + "\(node.server.base)/overlays/\(Node.hex(overlay)).tar.gz imagebuild.secrets=\(node.server.base)/boot/v1/secrets"))
        #expect(result.status == 0, "\(result.output)")
        // The secrets are asked for before the image (the window opens at stage 1's DHCP), laid after it.
        let output = result.stdout
        let asked = try #require(output.range(of: "imagebuild: [overlay] the node's own files come first, in the image's fetch"), "\(result.output)")
        let download = try #require(output.range(of: "imagebuild: [download]"), "\(result.output)")
        #expect(asked.lowerBound < download.lowerBound, "\(result.output)")
        // All of them before the image, the secrets first (in the image's imagebuild-fetch; this server closes each connection).
        let gets = node.server.requests.filter { $0.method == "GET" }.map(\.path)
        #expect(gets == ["/boot/v1/secrets", "/overlays/\(Node.hex(shared)).tar.xz", "/overlays/\(Node.hex(overlay)).tar.gz",
                         "/image.tar.gz"], "\(gets)")
        #expect(output.contains("imagebuild: [overlay] laying the node's own files over the root"), "\(result.output)")
        #expect(node.text("etc/hosts") == "10.77.0.11 node011\n")
        #expect(result.stdout.contains("imagebuild: [overlay] secrets: 2 files laid over the root; owners by name: 1"), "\(result.output)")

        #expect(node.text("etc/hostname") == "node011\n")
        #expect(node.modeAndOwner("etc/hostname") == "644 0:0")
        #expect(node.modeAndOwner("etc/node notes") == "640 105:4343", "owner by name from the owners file, group the tar's number")
        #expect(node.modeAndOwner("etc/ssh/ssh_host_ed25519_key") == "600 0:0")
        #expect(node.modeAndOwner("etc/munge/munge.key") == "400 105:107")
        #expect(node.modeAndOwner("etc/munge") == "700 105:107", "the image's folder is left as it was")
        #expect(node.modeAndOwner("etc/imagebuild/owners") == nil, "the owners file stays in the root")
        #expect(node.text("etc/imagebuild/boot.env")?.contains("IMAGEBUILD_MAC=52:54:00:77:00:11") == true)
        let tmp = node.text("tmp.txt") ?? "?"
        #expect(!tmp.contains("overlay-") && !tmp.contains("secrets.tar.gz"), "left in /tmp: \(tmp)")

        // The secrets came from a privileged port with the SMBIOS values (lower-case UUID, printable, trimmed, empty ones left out).
        let request = try #require(node.server.requests(to: "/boot/v1/secrets").first)
        #expect((512...1023).contains(request.peerPort), "source port \(request.peerPort)")
        #expect(request.header("X-Imagebuild-Product-UUID") == "4c4c4544-0042-3510-8052-b4c04f4b4d32")
        #expect(request.header("X-Imagebuild-Product-Serial") == "CZ2134XY")
        #expect(request.header("X-Imagebuild-Asset-Tag") == nil)
        // The reports from the image to switch_root go in one POST, in order.
        #expect(node.reports.suffix(2) == ["overlay 5 files", "switch-root /sbin/init"], "\(node.reports)")
        #expect(node.reportPosts == 1, "\(node.reports)")
    }

    @Test("a 403 for the secrets fails the boot with the server's reason, asked once; nothing is left in /tmp",
          .enabled(if: unavailable == nil, "needs root, unshare, chroot, bsdtar and busybox"))
    func refusalFailsTheBoot() throws {
        let node = try Node()
        node.serve("/boot/v1/secrets", .text(403, "Forbidden", "not from the node's address 10.77.0.11\n"))
        let result = try node.boot(node.cmdline("imagebuild.secrets=\(node.server.base)/boot/v1/secrets"))
        #expect(result.status == 1, "\(result.output)")
        #expect(result.stdout.contains("imagebuild: FAILED at step 'overlay': 403 not from the node's address 10.77.0.11\n"), "\(result.output)")
        #expect(node.reports.contains("failed overlay: 403 not from the node's address 10.77.0.11"), "\(node.reports)")
        #expect(!node.reports.contains { $0.hasPrefix("overlay ") || $0.hasPrefix("switch-root") }, "\(node.reports)")
        #expect(node.server.requests(to: "/boot/v1/secrets").count == 1, "a 403 was asked again")
        #expect(!FileManager.default.fileExists(atPath: node.chroot + "/tmp/secrets.tar.gz"))
    }

    @Test("an overlay that does not match its sha256, or an owner the image does not know, fails the boot",
          .enabled(if: unavailable == nil, "needs root, unshare, chroot, bsdtar and busybox"))
    func badOverlayFailsTheBoot() throws {
        let node = try Node()
        let overlay = try node.tar("overlay.tar.gz", [
            File(path: "etc/hostname", text: "node011\n", mode: "0644"),
            File(path: "etc/imagebuild/owners", text: "nosuch:munge etc/hostname\n", mode: "0644"),
        ])
        let wrong = String(repeating: "0", count: 64)
        node.serve("/overlays/\(wrong).tar.gz", .ok(overlay))
        node.serve("/overlays/\(Node.hex(overlay)).tar.gz", .ok(overlay))
        let mismatch = try node.boot(node.cmdline("imagebuild.overlay=\(node.server.base)/overlays/\(wrong).tar.gz"))
        #expect(mismatch.status == 1, "\(mismatch.output)")
        #expect(mismatch.stdout.contains("imagebuild: FAILED at step 'overlay': sha256 mismatch after \(overlay.count) bytes: expected \(wrong), got \(Node.hex(overlay))"),
                "\(mismatch.output)")
        #expect(!FileManager.default.fileExists(atPath: node.chroot + "/tmp/overlay-1.tar.gz"))
        let unnamed = try node.boot(node.cmdline("imagebuild.overlay=\(node.server.base)/overlay.tar.gz"))
        #expect(unnamed.stdout.contains("FAILED at step 'overlay': overlay: \(node.server.base)/overlay.tar.gz is not named by its sha256"), "\(unnamed.output)")

        let unknown = try node.boot(node.cmdline("imagebuild.overlay=\(node.server.base)/overlays/\(Node.hex(overlay)).tar.gz"))
        #expect(unknown.status == 1, "\(unknown.output)")
        #expect(unknown.stdout.contains("imagebuild: FAILED at step 'overlay': overlay: chown nosuch:munge /etc/hostname in the image: chown: unknown user/group nosuch:munge"),
                "\(unknown.output)")
    }

    @Test("without node files on the command line there is no overlay step and no overlay report",
          .enabled(if: unavailable == nil, "needs root, unshare, chroot, bsdtar and busybox"))
    func noNodeFiles() throws {
        let node = try Node()
        let result = try node.boot(node.cmdline(""))
        #expect(result.status == 0, "\(result.output)")
        #expect(!result.stdout.contains("[overlay]"), "\(result.output)")
        #expect(node.text("etc/hostname") == "image\n")
        #expect(node.reports.map { String($0.prefix { $0 != " " }) } == ["image-downloaded", "image-verified", "switch-root"], "\(node.reports)")
    }
}
