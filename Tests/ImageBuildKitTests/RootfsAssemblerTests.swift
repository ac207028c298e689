import Foundation
import Logging
import Testing
@testable import ImageBuildKit

/// Each base kind and each recipe step, applied to a real tree.
@Suite struct RootfsAssemblerTests {
    let dir = TemporaryDirectory("assemble")

    func assemble(_ yaml: String) throws -> RootfsTree {
        let recipe = try RecipeLoader.parse("name: t\nkernel: {path: /etc/hostname}\n" + yaml, file: "recipe.yaml", folder: dir.path)
        let tree = try RootfsTree(root: dir.path + "/root-\(UUID().uuidString.prefix(8))")
        try RootfsAssembler(recipe: recipe, tree: tree, scratch: dir.path + "/scratch-\(UUID().uuidString.prefix(8))",
                            logger: Logger(label: "test")).assemble()
        return tree
    }

    func read(_ tree: RootfsTree, _ path: String) throws -> String {
        try String(contentsOfFile: tree.hostPath(try tree.resolve(path, followLast: true)), encoding: .utf8)
    }

    @Test func directoryBaseIsCopiedWithLinks() throws {
        try sh("mkdir -p src/etc src/bin && echo base > src/etc/issue && ln -s ../etc/issue src/bin/issue-link", in: dir.path)
        let tree = try assemble("base: {directory: src}\n")
        #expect(try read(tree, "/etc/issue") == "base\n")
        #expect(try tree.readLink("/bin/issue-link") == "../etc/issue")
    }

    @Test func filesSymlinksKeysAndRemovals() throws {
        _ = dir.write("motd.txt", "from a file\n")
        _ = dir.write("admin.pub", "ssh-ed25519 AAAAkey admin\n")
        let tree = try assemble("""
            base: {scratch: true}
            directories: [{path: /srv/data, mode: "0750", owner: "7:8"}]
            files:
              - {path: /etc/motd, source: motd.txt, mode: "0640"}
              - {path: /etc/hello, content: "hi\\n"}
              - {path: /tmp/junk, content: x}
            symlinks: {/etc/localtime: /usr/share/zoneinfo/UTC}
            authorized_keys: {root: [admin.pub]}
            remove: [/tmp/junk]
            """)
        #expect(try read(tree, "/etc/motd") == "from a file\n")
        #expect(try read(tree, "/etc/hello") == "hi\n")
        #expect(try tree.readLink("/etc/localtime") == "/usr/share/zoneinfo/UTC")
        #expect(!FileManager.default.fileExists(atPath: tree.hostPath("/tmp/junk")))
        #expect(try read(tree, "/root/.ssh/authorized_keys") == "ssh-ed25519 AAAAkey admin\n")
        var plan = ArchivePlan(epoch: 1)
        try plan.addTree(tree, hardlinks: true)
        #expect(plan["/etc/motd"]?.mode == 0o640)
        #expect(plan["/root/.ssh"]?.mode == 0o700)
        #expect(plan["/root/.ssh/authorized_keys"]?.mode == 0o600)
        #expect(plan["/srv/data"]?.mode == 0o750)
        #expect(plan["/srv/data"]?.uid == 7 && plan["/srv/data"]?.gid == 8)
        #expect(plan["/etc/motd"]?.mtime == 1, "mtimes must be clamped to the epoch")
    }

    @Test func ownerNamesResolveAgainstTheImage() throws {
        let tree = try assemble("""
            base: {scratch: true}
            files:
              - {path: /etc/passwd, content: "root:x:0:0::/root:/bin/sh\\nsvc:x:901:902::/home/svc:/bin/sh\\n"}
              - {path: /etc/group, content: "root:x:0:\\nsvcgrp:x:902:\\n"}
            authorized_keys: {svc: ["ssh-ed25519 AAAAsvc"]}
            """)
        var plan = ArchivePlan(epoch: 1)
        try plan.addTree(tree, hardlinks: true)
        #expect(plan["/home/svc/.ssh/authorized_keys"]?.uid == 901)
        #expect(plan["/home/svc/.ssh/authorized_keys"]?.gid == 902)
    }

    @Test func unknownOwnerNameIsLocated() throws {
        #expect(throws: RootfsError.unknownOwner(name: "nobody9", kind: "user", location: ConfigLocation(file: "recipe.yaml", line: 6, column: 5))) {
            _ = try assemble("""
                base: {scratch: true}
                files:
                  - {path: /etc/passwd, content: "root:x:0:0::/root:/bin/sh\\n"}
                  - {path: /etc/x, content: y, owner: nobody9}
                """)
        }
    }

    @Test func debFilesAreUnpackedWithoutDpkg() throws {
        try sh("""
            mkdir -p pkg/DEBIAN pkg/usr/bin pkg/etc && printf 'Package: demo\\nVersion: 1\\nArchitecture: all\\nMaintainer: t <t@t>\\nDescription: d\\n' > pkg/DEBIAN/control \
            && echo demo > pkg/etc/demo.conf && printf '#!/bin/sh\\necho demo\\n' > pkg/usr/bin/demo && chmod 755 pkg/usr/bin/demo \
            && dpkg-deb -Zxz --root-owner-group --build pkg demo.deb >/dev/null
            """, in: dir.path)
        let tree = try assemble("base: {debs: {files: [demo.deb]}}\n")
        #expect(try read(tree, "/etc/demo.conf") == "demo\n")
        var plan = ArchivePlan(epoch: 1)
        try plan.addTree(tree, hardlinks: true)
        #expect(plan["/usr/bin/demo"]?.mode == 0o755)
    }

    @Test func ociLayersApplyInOrderWithWhiteouts() throws {
        // Layer 1: /a/keep, /a/gone, /opaque/old. Layer 2: whiteout of /a/gone, opaque /opaque with /opaque/new.
        try sh("""
            mkdir -p l1/a l1/opaque l2/a l2/opaque oci/blobs/sha256 \
            && echo keep > l1/a/keep && echo gone > l1/a/gone && echo old > l1/opaque/old \
            && touch l2/a/.wh.gone l2/opaque/.wh..wh..opq && echo new > l2/opaque/new \
            && (cd l1 && bsdtar -czf ../layer1.tgz a opaque) && (cd l2 && bsdtar -cf ../layer2.tar a opaque) \
            && d1=$(sha256sum layer1.tgz | cut -c1-64) && d2=$(sha256sum layer2.tar | cut -c1-64) \
            && cp layer1.tgz oci/blobs/sha256/$d1 && cp layer2.tar oci/blobs/sha256/$d2 \
            && printf '{"schemaVersion":2,"layers":[{"digest":"sha256:%s"},{"digest":"sha256:%s"}]}' $d1 $d2 > manifest \
            && dm=$(sha256sum manifest | cut -c1-64) && cp manifest oci/blobs/sha256/$dm \
            && printf '{"schemaVersion":2,"manifests":[{"digest":"sha256:%s"}]}' $dm > oci/index.json \
            && echo '{"imageLayoutVersion":"1.0.0"}' > oci/oci-layout && (cd oci && bsdtar -cf ../image.oci.tar .)
            """, in: dir.path)
        let tree = try assemble("base: {oci-archive: image.oci.tar}\n")
        #expect(try read(tree, "/a/keep") == "keep\n")
        #expect(!FileManager.default.fileExists(atPath: tree.hostPath("/a/gone")))
        #expect(!FileManager.default.fileExists(atPath: tree.hostPath("/a/.wh.gone")))
        #expect(!FileManager.default.fileExists(atPath: tree.hostPath("/opaque/old")))
        #expect(try read(tree, "/opaque/new") == "new\n")
    }

    @Test(.enabled(if: geteuid() == 0 && FileManager.default.fileExists(atPath: "/bin/busybox"), "run: needs root and busybox"))
    func runCommandsSeeProcAndAreUnmountedAfter() throws {
        let tree = try assemble("""
            base: {scratch: true}
            busybox: host
            run:
              - test -r /proc/self/stat && test -e /dev/null && touch /ran-with-proc
            """)
        #expect(FileManager.default.fileExists(atPath: tree.hostPath("/ran-with-proc")))
        let mounts = try String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)
        #expect(!mounts.contains(tree.root), "mounts left behind")
    }

    @Test(.enabled(if: geteuid() == 0 && FileManager.default.fileExists(atPath: "/bin/busybox"), "run: needs root and busybox"))
    func failingCommandIsLocatedAndStillUnmounts() throws {
        do {
            _ = try assemble("""
                base: {scratch: true}
                busybox: host
                run:
                  - "true"
                  - echo oops >&2; exit 3
                """)
            Issue.record("the failing command did not fail the build")
        } catch let error as RootfsError {
            #expect("\(error)".hasPrefix("recipe.yaml:7:5: command failed with status 3: echo oops >&2; exit 3"), "\(error)")
        }
        let mounts = try String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)
        #expect(!mounts.contains(dir.path), "mounts left behind after a failure")
    }
}
