import Foundation
import Testing
import TestSupport
@testable import ImageBuildKit

/// The build cache's rule for network bases (`InputDigest`): a bootstrap base is digested by the
/// release file of each suite it installs from, fetched from its mirror; a mirror that cannot be read
/// makes the build not cacheable. The mirror here is a fake `dists/` tree served over real HTTP by
/// busybox httpd on loopback, or read through a `file:` URL.
@Suite(.serialized, .enabled(if: FakeMirror.missingTools == nil, "\(FakeMirror.missingTools ?? "")"))
struct InputDigestTests {
    let dir = TemporaryDirectory("digest")

    /// A fake mirror: `debian/dists/<suite>/InRelease` (or `Release`) for each suite.
    func publish(_ suite: String, _ text: String, file: String = "InRelease") {
        _ = dir.write("debian/dists/\(suite)/\(file)", text)
    }

    func recipe(mirror: String, suite: String = "bookworm") throws -> Recipe {
        let yaml = """
            name: net
            base: {mmdebstrap: {suite: \(suite), mirror: "\(mirror)"}}
            kernel: {from: rootfs}
            """
        return try RecipeLoader.load(path: dir.write("recipe.yaml", yaml))
    }

    func digest(_ recipe: Recipe) throws -> (digest: String?, inputs: InputDigest) {
        let inputs = try InputDigest(recipe: recipe, fetchTimeout: 10)
        return (inputs.digest(epoch: 1_700_000_000), inputs)
    }

    typealias Mirror = FakeMirror
}

/// busybox httpd serving a folder on 127.0.0.1, on a free port; stopped by PID in `stop()`.
final class FakeMirror {
    /// InputDigest digests the bootstrap tool and apt of this host; the mirror is busybox httpd.
    static let missingTools: String? = ProcessRunner.missing(["mmdebstrap", "apt-get", "dpkg", "busybox", "curl"])
    let server: BackgroundProcess
    let url: String
    init(root: String) throws {
        for _ in 0..<20 {
            let port = Int.random(in: 20_000...60_000)
            let process = try BackgroundProcess("/bin/busybox", ["httpd", "-f", "-p", "127.0.0.1:\(port)", "-h", root],
                                                log: root + "/httpd-\(port).log")
            // busybox httpd exits at once when the port is taken; answering proves it listens.
            let deadline = Date().addingTimeInterval(5)
            while process.isRunning, Date() < deadline {
                if (try? ProcessRunner.shell("curl -s -o /dev/null http://127.0.0.1:\(port)/", timeout: 5))?.status == 0 {
                    server = process
                    url = "http://127.0.0.1:\(port)/debian"
                    return
                }
                usleep(50_000)
            }
            process.kill()
        }
        throw ProcessError("busybox httpd found no free port")
    }
    /// SIGKILL by PID, reaped: busybox httpd (in the foreground) waits out SIGTERM, and it keeps no state.
    func stop() { server.kill() }
}

extension InputDigestTests {
    @Test("a changed InRelease on the mirror changes the digest; the same one gives the same digest")
    func changedInReleaseChangesTheDigest() throws {
        publish("bookworm", "Suite: bookworm\nDate: Sat, 11 Jul 2026 10:16:37 UTC\n")
        let mirror = try Mirror(root: dir.path)
        defer { mirror.stop() }
        let recipe = try recipe(mirror: mirror.url)
        let first = try digest(recipe)
        #expect(first.digest != nil, "not cacheable: \(first.inputs.uncacheable)")
        #expect(first.inputs.releases.map(\.url) == [mirror.url + "/dists/bookworm/InRelease"])
        #expect(try digest(recipe).digest == first.digest, "the same mirror content must give the same digest")

        publish("bookworm", "Suite: bookworm\nDate: Sat, 18 Jul 2026 09:00:00 UTC\n")
        let changed = try digest(recipe)
        #expect(changed.digest != nil)
        #expect(changed.digest != first.digest, "a new InRelease must not reuse the old build")

        publish("bookworm", "Suite: bookworm\nDate: Sat, 11 Jul 2026 10:16:37 UTC\n")
        #expect(try digest(recipe).digest == first.digest)
    }

    @Test("without an InRelease the mirror's Release is digested")
    func releaseWhenNoInRelease() throws {
        publish("bookworm", "Suite: bookworm\nDate: 1\n", file: "Release")
        let mirror = try Mirror(root: dir.path)
        defer { mirror.stop() }
        let recipe = try recipe(mirror: mirror.url)
        let first = try digest(recipe)
        #expect(first.digest != nil, "not cacheable: \(first.inputs.uncacheable)")
        #expect(first.inputs.releases.map(\.url) == [mirror.url + "/dists/bookworm/Release"])
        publish("bookworm", "Suite: bookworm\nDate: 2\n", file: "Release")
        #expect(try digest(recipe).digest != first.digest)
    }

    @Test("a mirror that cannot be reached, or has no release file for the suite, is not cacheable")
    func unreachableMirrorIsNotCacheable() throws {
        publish("bookworm", "Suite: bookworm\n")
        let mirror = try Mirror(root: dir.path)
        let missingSuite = try digest(try recipe(mirror: mirror.url, suite: "trixie"))
        #expect(missingSuite.digest == nil)
        #expect(missingSuite.inputs.uncacheable.contains { $0.contains("/dists/trixie/Release") && $0.contains("404") },
                "\(missingSuite.inputs.uncacheable)")
        let recipe = try recipe(mirror: mirror.url)
        #expect(try digest(recipe).digest != nil)
        mirror.stop()
        let unreachable = try digest(recipe)
        #expect(unreachable.digest == nil, "an unreachable mirror must not give a digest")
        #expect(unreachable.inputs.uncacheable.contains { $0.contains(mirror.url + "/dists/bookworm/InRelease") },
                "\(unreachable.inputs.uncacheable)")
    }

    @Test("a file: mirror is read; a scheme that cannot be read is not cacheable")
    func fileMirror() throws {
        publish("bookworm", "Suite: bookworm\nDate: 1\n")
        let recipe = try recipe(mirror: "file://" + dir.path + "/debian")
        let first = try digest(recipe)
        #expect(first.digest != nil, "not cacheable: \(first.inputs.uncacheable)")
        publish("bookworm", "Suite: bookworm\nDate: 2\n")
        #expect(try digest(recipe).digest != first.digest)
        let other = try digest(try self.recipe(mirror: "copy://" + dir.path + "/debian"))
        #expect(other.digest == nil && other.inputs.uncacheable.contains { $0.contains("copy") })
    }

    @Test("a build whose tool installed from other release files than the digested ones is not cacheable")
    func confirmAgainstWhatTheToolUsed() throws {
        let text = "Suite: bookworm\nDate: 1\n"
        publish("bookworm", text)
        let recipe = try recipe(mirror: "file://" + dir.path + "/debian")
        var same = try InputDigest(recipe: recipe)
        let expected = same.digest(epoch: 0)
        let sha = try sha256File(dir.path + "/debian/dists/bookworm/InRelease").digest
        // The tool's lists hold the same InRelease (and, as debootstrap's do, a Release split from it).
        same.confirm(RootfsAssembler.Result(bootstrapReleases: [sha, String(repeating: "0", count: 64)]))
        #expect(expected != nil && same.digest(epoch: 0) == expected)

        var changed = try InputDigest(recipe: recipe)
        changed.confirm(RootfsAssembler.Result(bootstrapReleases: [String(repeating: "1", count: 64)]))
        #expect(changed.digest(epoch: 0) == nil)
        #expect(changed.uncacheable.contains { $0.contains("did not install from") })

        var unread = try InputDigest(recipe: recipe)
        unread.confirm(RootfsAssembler.Result(bootstrapReleases: []))
        #expect(unread.digest(epoch: 0) == nil)
    }

    @Test("the tool reads its lists' release files: InRelease and Release, nothing else")
    func releaseFilesOfAnAptListsFolder() throws {
        let lists = dir.path + "/lists"
        let inRelease = dir.write("lists/deb.debian.org_debian_dists_bookworm_InRelease", "a")
        _ = dir.write("lists/security.debian.org_debian-security_dists_bookworm-security_Release", "b")
        _ = dir.write("lists/security.debian.org_debian-security_dists_bookworm-security_Release.gpg", "c")
        _ = dir.write("lists/deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages", "d")
        let found = RootfsAssembler.releaseFileDigests(in: lists)
        #expect(found == [try sha256File(inRelease).digest, try sha256File(lists + "/security.debian.org_debian-security_dists_bookworm-security_Release").digest])
    }
}

/// Which suites a bootstrap base installs from: one rule for the tool's arguments and the cache.
@Suite struct BootstrapSourcesTests {
    @Test func sources() {
        func lines(_ tool: BootstrapTool, _ suite: String, _ mirror: String? = nil, _ components: [String] = []) -> [String] {
            AptSource.sources(tool: tool, suite: suite, mirror: mirror, components: components).map(\.line)
        }
        #expect(lines(.mmdebstrap, "bookworm") == [
            "deb http://deb.debian.org/debian bookworm main",
            "deb http://deb.debian.org/debian bookworm-updates main",
            "deb http://security.debian.org/debian-security bookworm-security main",
        ])
        #expect(lines(.mmdebstrap, "sid") == ["deb http://deb.debian.org/debian sid main"])
        #expect(lines(.debootstrap, "bookworm") == ["deb http://deb.debian.org/debian bookworm main"])
        #expect(lines(.mmdebstrap, "bookworm", "http://mirror.example/debian/", ["main", "contrib"])
                == ["deb http://mirror.example/debian/ bookworm main contrib"])
        #expect(AptSource(uri: "http://mirror.example/debian/", suite: "bookworm", components: ["main"]).releaseFiles
                == ["http://mirror.example/debian/dists/bookworm/InRelease", "http://mirror.example/debian/dists/bookworm/Release"])
    }
}

/// Inputs the recipe names by file but whose contents only the loader reads.
@Suite struct InputDigestFileInputTests {
    let dir = TemporaryDirectory("digest-keys")

    @Test("a changed authorized_keys file changes the digest")
    func authorizedKeysFile() throws {
        _ = dir.write("admin.pub", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOne admin@site\n")
        let file = dir.write("recipe.yaml", """
            name: keys
            base: {scratch: true}
            kernel: {path: /etc/hostname}
            authorized_keys: {root: [admin.pub]}
            """)
        let first = try InputDigest(recipe: try RecipeLoader.load(path: file)).digest(epoch: 0)
        #expect(first != nil)
        _ = dir.write("admin.pub", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITwo admin@site\n")
        let second = try InputDigest(recipe: try RecipeLoader.load(path: file)).digest(epoch: 0)
        #expect(second != nil && second != first, "a new key must not reuse an image holding the old one")
    }
}
