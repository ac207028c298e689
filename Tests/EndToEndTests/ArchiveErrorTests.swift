import Foundation
import Testing

extension EndToEnd {
    /// Bad archives handed to the real binary: each is one clear error line and exit status 1, never a
    /// crash (a double free in ArchiveReader.init once made these exit 134 or 139). The hostile OCI
    /// archives are what fuzz/archive/run.sh's target checks for: nothing of the host read into the image,
    /// nothing removed outside the tree, no build blocked on a FIFO.
    @Suite("Bad and hostile archives: inspect and build fail with one clear line", .serialized)
    struct ArchiveErrorTests {
        /// Exit status 1 and, on stderr, the progress lines of a build at most and then exactly one error
        /// line that names `file` and says `reason`.
        static func expectCleanFailure(_ result: Harness.Result, file: String, reason: String,
                                       sourceLocation: SourceLocation = #_sourceLocation) {
            #expect(result.status == 1, "exit status \(result.status) (139 is SIGSEGV, 134 SIGABRT, 132 a trap):\n\(result.stderr)",
                    sourceLocation: sourceLocation)
            let lines = result.stderr.split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init)
            let errors = lines.filter { $0.hasPrefix("imagebuild: error: ") }
            #expect(errors == ["imagebuild: error: \(file): \(reason)"], "stderr:\n\(result.stderr)", sourceLocation: sourceLocation)
            #expect(lines.last == errors.first, "the error is not the last line:\n\(result.stderr)", sourceLocation: sourceLocation)
            #expect(lines.allSatisfy { $0.hasPrefix("imagebuild: error: ") || $0.hasPrefix("[") },
                    "stderr has more than progress and the error:\n\(result.stderr)", sourceLocation: sourceLocation)
        }

        @Test("inspect: a missing file, an empty file, a text file and a truncated tar.gz")
        func inspectBadFiles() async throws { try await Harness.blocking { try Self().inspectBadFilesOnThread() } }
        func inspectBadFilesOnThread() throws {
            let dir = Harness.temporaryDirectory("inspect-bad")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            try #require(Harness.shell("""
                cd \(dir) && : > empty && echo 'just some text, not an archive' > notes.txt \
                && mkdir tree && echo hello > tree/hello && tar -C tree -czf whole.tar.gz . && head -c 60 whole.tar.gz > cut.tar.gz \
                && printf '' | gzip > empty.gz \
                && printf '#mtree\\n./a type=file size=9223372036854775807\\n./b type=file size=9223372036854775807\\n' > huge.mtree
                """).status == 0)
            let cases: [(file: String, reason: String)] = [
                (dir + "/missing.tar", "cannot open: No such file or directory"),
                (dir + "/empty", "not an archive: the file is empty"),
                (dir + "/empty.gz", "not an archive: the compressed data is empty"),
                (dir + "/notes.txt", "Unrecognized archive format"),
                (dir + "/cut.tar.gz", "truncated gzip input"),
                (dir, "cannot read: Is a directory"),
                // mtree is not read: its sizes are only declared (these two overflowed inspect's total).
                (dir + "/huge.mtree", "Unrecognized archive format"),
            ]
            for (file, reason) in cases {
                Self.expectCleanFailure(try Harness.imagebuild(["inspect", file], timeout: 30), file: file, reason: reason)
            }
            let whole = try Harness.imagebuild(["inspect", dir + "/whole.tar.gz"], timeout: 30)
            #expect(whole.status == 0 && whole.stdout.contains("./hello"), "\(whole.stdout)\(whole.stderr)")
        }

        @Test("build: a corrupt 'base: tarball' fails before any artifact is written")
        func buildCorruptTarball() async throws { try await Harness.blocking { try Self().buildCorruptTarballOnThread() } }
        func buildCorruptTarballOnThread() throws {
            let dir = Harness.temporaryDirectory("corrupt-base")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            try #require(Harness.shell("""
                cd \(dir) && mkdir -p tree/etc && echo 'root:x:0:0::/root:/bin/sh' > tree/etc/passwd \
                && head -c 4096 /dev/urandom > tree/etc/noise && tar -C tree -czf base.tar.gz . \
                && head -c 400 base.tar.gz > corrupt.tar.gz && printf 'not a tarball\\n' > text.tar
                """).status == 0)
            for (file, reason) in [("corrupt.tar.gz", "truncated gzip input"), ("text.tar", "Unrecognized archive format")] {
                let recipe = dir + "/recipe.yaml"
                try "name: corrupt\nbase: {tarball: \(file)}\nkernel: {from: rootfs}\n".write(toFile: recipe, atomically: true, encoding: .utf8)
                let result = try Harness.imagebuild(["build", recipe, "--out", dir + "/out"], timeout: 60)
                Self.expectCleanFailure(result, file: dir + "/" + file, reason: reason)
                let left = (try? FileManager.default.contentsOfDirectory(atPath: dir + "/out")) ?? []
                #expect(left.isEmpty, "the failed build left \(left) in the output folder")
            }
        }

        @Test("build: hostile OCI archives are refused (digest paths, symlinked or FIFO blobs, '.wh...' whiteouts)")
        func buildHostileOCI() async throws { try await Harness.blocking { try Self().buildHostileOCIOnThread() } }
        func buildHostileOCIOnThread() throws {
            let dir = Harness.temporaryDirectory("hostile-oci")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            // A host file that is a valid layer: before the fix, a digest path or a symlinked blob put it in the image.
            // Each archive: index.json -> manifest blob "m" -> one layer blob.
            try #require(Harness.shell("""
                set -e; cd \(dir); mkdir -p secret; echo 'host secret' > secret/stolen; tar -C secret -cf host-layer.tar .
                oci() { name=$1; layer=$2; mkdir -p $name/blobs/sha256
                    printf '{"layers":[{"digest":"%s"}]}' "$layer" > $name/blobs/sha256/m
                    printf '{"manifests":[{"digest":"sha256:m"}]}' > $name/index.json; }
                oci traversal "sha256:../../../../../../../../../..\(dir)/host-layer.tar"; tar -C traversal -cf traversal.tar .
                oci symlink sha256:aa; ln -s \(dir)/host-layer.tar symlink/blobs/sha256/aa; tar -C symlink -cf symlink.tar .
                oci fifo sha256:aa; mkfifo fifo/blobs/sha256/aa; tar -C fifo -cf fifo.tar .
                mkdir -p whiteout-layer; : > 'whiteout-layer/.wh...'; tar -C whiteout-layer -cf whiteout-layer.tar .
                oci whiteout sha256:aa; cp whiteout-layer.tar whiteout/blobs/sha256/aa; tar -C whiteout -cf whiteout.tar .
                """).status == 0)
            let cases: [(archive: String, message: String)] = [
                ("traversal.tar", "malformed digest 'sha256:../../../../../../../../../..\(dir)/host-layer.tar' (expected algorithm:hex, e.g. sha256:1f2e...)"),
                ("symlink.tar", "blobs/sha256/aa is not in the archive"),
                ("fifo.tar", "blobs/sha256/aa is not a regular file in the archive"),
                ("whiteout.tar", "whiteout './.wh...' names no file; the layer is corrupt"),
            ]
            for (archive, message) in cases {
                let recipe = dir + "/recipe.yaml"
                try "name: hostile\nbase: {oci-archive: \(archive)}\nkernel: {from: rootfs}\n".write(toFile: recipe, atomically: true, encoding: .utf8)
                // The FIFO once blocked the build for good: the time-out is the check.
                let result = try Harness.imagebuild(["build", recipe, "--out", dir + "/out"], timeout: 60)
                let file = archive == "whiteout.tar" ? dir + "/whiteout.tar!blobs/sha256/aa" : dir + "/" + archive
                Self.expectCleanFailure(result, file: file, reason: message)
                #expect(FileManager.default.fileExists(atPath: dir + "/secret/stolen"))
            }
        }
    }
}
