import Foundation
import Testing
import TestSupport
@testable import ImageBuildKit

@Suite("Archive writer")
struct ArchiveWriterTests {
    /// A service or CI job runs in the C locale, where libarchive could not convert a
    /// non-ASCII name to UTF-8 and marked the header `hdrcharset=BINARY`: busybox tar
    /// then printed a warning on every node's console. The test pins the C locale on
    /// its own thread so it holds whatever locale the runner has.
    /// Archives name files by UTF-8 strings: a name or link target that is not UTF-8 must stop the
    /// build with a message naming it, never be written as another name (U+FFFD) or fail as a
    /// missing file.
    @Test("a file name or a link target that is not UTF-8 is refused, naming it; the tree's UTF-8 names are taken")
    func namesThatAreNotUTF8() throws {
        let dir = TemporaryDirectory("not-utf8")
        let tree = try RootfsTree(root: dir.path + "/root")
        try FileManager.default.createDirectory(atPath: tree.root + "/etc/café", withIntermediateDirectories: true)
        _ = dir.write("root/etc/café/ok", "fine\n")
        var plan = ArchivePlan(epoch: 0)
        try plan.addTree(tree, hardlinks: true)
        #expect(plan.contains("/etc/café/ok"))

        // A Latin-1 "é" (0xE9) in a file name.
        let badName = tree.root + "/etc/caf" + String(decoding: [0xE9], as: UTF8.self)
        let raw: [UInt8] = Array((tree.root + "/etc/caf").utf8) + [0xE9, 0]
        let fd = raw.withUnsafeBufferPointer { open(UnsafeRawPointer($0.baseAddress!).assumingMemoryBound(to: CChar.self), O_CREAT | O_WRONLY, 0o644) }
        try #require(fd >= 0, "\(badName)")
        close(fd)
        var withName = ArchivePlan(epoch: 0)
        #expect(throws: RootfsError.notUTF8(path: "/etc/caf\u{FFFD}", what: "name")) { try withName.addTree(tree, hardlinks: true) }
        let unlinked = raw.withUnsafeBufferPointer { unlink(UnsafeRawPointer($0.baseAddress!).assumingMemoryBound(to: CChar.self)) }
        try #require(unlinked == 0)

        // A link whose target holds the same byte.
        let target: [UInt8] = Array("caf".utf8) + [0xE9, 0]
        let linked = target.withUnsafeBufferPointer { symlink(UnsafeRawPointer($0.baseAddress!).assumingMemoryBound(to: CChar.self), tree.root + "/etc/link") }
        try #require(linked == 0)
        var withTarget = ArchivePlan(epoch: 0)
        #expect(throws: RootfsError.notUTF8(path: "/etc/link", what: "link target")) { try withTarget.addTree(tree, hardlinks: true) }
        #expect(RootfsError.notUTF8(path: "/etc/link", what: "link target").description.contains("squashfs or erofs"))
    }

    @Test("what a tree takes in a tmpfs: its data in whole pages, and the kernel's memory for every name")
    func tmpfsBytes() {
        var plan = ArchivePlan(epoch: 0)
        plan.addText("etc/one", "x")                                   // 1 page; "etc" is added as a folder
        plan.addData("etc/two", Data(count: 4097), mode: 0o644)         // 2 pages
        plan.addDirectory("run")
        plan.addSymlink("etc/mtab", target: "../proc/self/mounts")
        plan.add("etc/three", .init(kind: .hardlink(target: "/etc/one"), mode: 0o644, uid: 0, gid: 0, mtime: 0, size: 0, content: .none))
        let pages: Int64 = 3 * 4096
        let names = 4 * ArchivePlan.tmpfsInodeBytes + ArchivePlan.tmpfsSymlinkBytes + ArchivePlan.tmpfsHardlinkBytes
        #expect(plan.count == 6)
        #expect(plan.tmpfsBytes == pages + names)
    }

    @Test("a UTF-8 name in the C locale: a plain pax path, no hdrcharset, read back the same")
    func utf8NamesInTheCLocale() throws {
        let name = "usr/share/café/naïve-東京.txt"
        let cLocale = try #require(newlocale(LC_CTYPE_MASK, "C", nil))
        defer { freelocale(cLocale) }
        let previous = uselocale(cLocale)
        defer { uselocale(previous) }

        var bytes: [UInt8] = []
        let writer = try ArchiveWriter(format: .paxRestricted) { bytes.append(contentsOf: $0) }
        let content = Array("hello\n".utf8)
        try writer.write(path: name, kind: .regular, permissions: 0o644, uid: 0, gid: 0, mtime: 0, inode: 1,
                         size: Int64(content.count)) { sink in try content.withUnsafeBytes(sink) }
        try writer.close()

        let marksBinary = bytes.contains(subsequence: Array("hdrcharset".utf8))
        let hasUTF8Path = bytes.contains(subsequence: Array("path=\(name)\n".utf8))
        #expect(!marksBinary)
        #expect(hasUTF8Path)

        let directory = TemporaryDirectory("archive-writer")
        let archive = directory.path + "/utf8.tar"
        try Data(bytes).write(to: URL(fileURLWithPath: archive))
        let reader = try ArchiveReader(path: archive)
        #expect(try reader.next()?.path == name)

        // Stage 1 reads images with busybox tar: it must list the name and print nothing else.
        let busybox = try #require(ProcessRunner.which("busybox"), "scripts/setup installs busybox-static")
        let listed = try ProcessRunner.run(busybox, ["tar", "-tf", archive])
        #expect(listed.status == 0)
        #expect(listed.stdout == name + "\n")
        #expect(listed.stderr.isEmpty, "busybox tar: \(listed.stderr)")
    }
}

private extension Array where Element == UInt8 {
    func contains(subsequence needle: [UInt8]) -> Bool {
        guard needle.count <= count else { return false }
        return (0...(count - needle.count)).contains { start in self[start..<start + needle.count].elementsEqual(needle) }
    }
}
