import Foundation
import Testing
@testable import ImageBuildKit

/// Extraction must never write outside the rootfs, whatever the archive says.
@Suite struct RootfsSafetyTests {
    let dir = TemporaryDirectory("rootfs")

    /// Builds a tarball with bsdtar from a shell script that lays out the members.
    func tarball(_ setup: String, members: String, flags: String = "-P") throws -> String {
        let staging = dir.path + "/staging"
        try FileManager.default.createDirectory(atPath: staging, withIntermediateDirectories: true)
        try sh(setup, in: staging)
        let out = dir.path + "/evil.tar"
        try sh("bsdtar \(flags) -cf \(out) \(members)", in: staging)
        return out
    }

    func extract(_ archive: String) throws -> RootfsTree {
        let tree = try RootfsTree(root: dir.path + "/root")
        try tree.extract(archive: try ArchiveReader(path: archive), source: archive)
        return tree
    }

    @Test func absoluteNamesLandInsideTheRoot() throws {
        let outside = dir.path + "/outside-abs"
        let archive = dir.path + "/abs.tar"
        // bsdtar -P keeps the absolute name in the archive.
        try sh("mkdir -p \(outside) && echo evil > \(outside)/file && bsdtar -P -cf \(archive) \(outside)/file && rm \(outside)/file")
        let tree = try extract(archive)
        #expect(!FileManager.default.fileExists(atPath: outside + "/file"))
        #expect(FileManager.default.fileExists(atPath: tree.root + outside + "/file"))
    }

    @Test func dotDotEscapeIsRefused() throws {
        try sh("mkdir -p a && echo evil > a/x", in: dir.path)
        let archive = dir.path + "/dotdot.tar"
        // -s rewrites the stored name to climb out of the root.
        try sh("bsdtar -P -s ',^a/x$,../../escaped-dotdot,' -cf \(archive) a/x", in: dir.path)
        #expect(throws: RootfsError.escapes(entry: "../../escaped-dotdot", source: archive)) {
            _ = try extract(archive)
        }
        #expect(!FileManager.default.fileExists(atPath: dir.path + "/escaped-dotdot"))
        #expect(!FileManager.default.fileExists(atPath: (dir.path as NSString).deletingLastPathComponent + "/escaped-dotdot"))
    }

    @Test func symlinkPointingOutIsFollowedInsideTheRoot() throws {
        // Member 1: etc -> /victim-etc (absolute, outside). Member 2: etc/passwd.
        let victim = dir.path + "/victim-etc"
        try FileManager.default.createDirectory(atPath: victim, withIntermediateDirectories: true)
        let archive = try tarball("ln -s \(victim) etc && mkdir -p real && echo pwned > real/passwd",
                                  members: "etc")
        // Append a member named etc/passwd.
        try sh("bsdtar -s ',^real/passwd$,etc/passwd,' -rf \(archive) real/passwd", in: dir.path + "/staging")
        let tree = try extract(archive)
        #expect(!FileManager.default.fileExists(atPath: victim + "/passwd"), "wrote through the symlink onto the host")
        // The link stays a link, and the file went to <root>/<victim>/passwd, i.e. inside the tree.
        #expect(FileManager.default.fileExists(atPath: tree.root + victim + "/passwd"))
    }

    @Test func relativeSymlinkClimbingOutIsClampedAtRoot() throws {
        let archive = try tarball("ln -s ../../../../../../tmp up && mkdir -p real && echo x > real/f", members: "up")
        try sh("bsdtar -s ',^real/f$,up/clamped-file,' -rf \(archive) real/f", in: dir.path + "/staging")
        let tree = try extract(archive)
        #expect(!FileManager.default.fileExists(atPath: "/tmp/clamped-file"))
        #expect(FileManager.default.fileExists(atPath: tree.root + "/tmp/clamped-file"))
    }

    @Test func hardlinkToOutsideIsRefused() throws {
        let archive = dir.path + "/hl.tar"
        try sh("mkdir -p s && echo a > s/f && ln s/f s/g && bsdtar -cf \(archive) s/f s/g", in: dir.path)
        // Rewrite the link target to climb out.
        try sh("bsdtar -s ',^s/f$,../../../etc/hostname,' -cf \(dir.path)/hl2.tar s/f s/g", in: dir.path)
        #expect(throws: RootfsError.self) { _ = try extract(dir.path + "/hl2.tar") }
    }

    @Test func ownersAndModesAreKept() throws {
        let archive = try tarball("mkdir -p d && echo hi > d/f && chown 123:456 d/f && chmod 4711 d/f", members: "d")
        let tree = try extract(archive)
        var plan = ArchivePlan(epoch: 1_700_000_000)
        try plan.addTree(tree, hardlinks: true)
        let entry = try #require(plan["/d/f"])
        #expect(entry.mode == 0o4711)
        #expect(entry.uid == 123 && entry.gid == 456)
    }
}
