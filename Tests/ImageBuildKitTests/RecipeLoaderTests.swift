import Foundation
import Testing
@testable import ImageBuildKit

@Suite struct RecipeLoaderTests {
    let dir = TemporaryDirectory("recipe")

    func load(_ text: String) throws -> Recipe {
        try RecipeLoader.parse(text, file: "recipe.yaml", folder: dir.path)
    }

    func error(_ text: String) -> String {
        do {
            _ = try load(text)
            return "no error"
        } catch {
            return "\(error)"
        }
    }

    static let minimal = """
        name: test
        base: {scratch: true}
        kernel: {path: /etc/hostname}
        """

    @Test func minimalRecipeHasDefaults() throws {
        let recipe = try load(Self.minimal)
        #expect(recipe.name == "test")
        #expect(recipe.base == .scratch)
        #expect(recipe.kernel.source == .path("/etc/hostname"))
        #expect(recipe.initramfs.compression == .gzip)
        #expect(recipe.initramfs.busybox == .host)
        #expect(recipe.image.format == .squashfs)
        #expect(recipe.cmdline == "console=ttyS0,115200")
    }

    @Test func unknownKeyIsLocatedWithHint() {
        #expect(error(Self.minimal + "\npakages: [a]\n") == "recipe.yaml:4:1: unknown key 'pakages' (did you mean 'packages'?)")
    }

    @Test func nestedUnknownKeyIsLocated() {
        let text = Self.minimal + "\ninitramfs:\n  modules: [e1000]\n  compresion: xz\n"
        #expect(error(text) == "recipe.yaml:6:3: unknown key 'compresion' (did you mean 'compression'?)")
    }

    @Test func wrongTypeIsLocated() {
        #expect(error(Self.minimal + "\ninitramfs: {modules: e1000}\n") == "recipe.yaml:4:22: expected a list, found a scalar")
    }

    @Test func badModeIsLocated() {
        let text = Self.minimal + "\nfiles:\n  - {path: /etc/motd, content: hi, mode: \"0999\"}\n"
        #expect(error(text) == "recipe.yaml:5:42: bad mode '0999' (write octal permission bits in quotes, e.g. \"0644\" or \"0755\")")
    }

    @Test func unquotedModeIsReadAsOctal() throws {
        let recipe = try load(Self.minimal + "\nfiles:\n  - {path: /bin/x, content: hi, mode: 4755}\n")
        #expect(recipe.files[0].mode == 0o4755)
    }

    @Test func missingSourceFileIsLocated() {
        let text = Self.minimal + "\nfiles:\n  - path: /etc/motd\n    source: motd.txt\n"
        #expect(error(text) == "recipe.yaml:6:13: 'motd.txt' does not exist (relative paths are resolved against \(dir.path))")
    }

    @Test func relativeSourcesResolveAgainstRecipeFolder() throws {
        _ = dir.write("keys/admin.pub", "ssh-ed25519 AAAAC3Nza admin@example\n")
        _ = dir.write("motd.txt", "hello\n")
        let recipe = try load(Self.minimal + "\nfiles:\n  - {path: /etc/motd, source: motd.txt}\nauthorized_keys:\n  root: [keys/admin.pub, \"ssh-rsa AAAAB3 other\"]\n")
        #expect(recipe.files[0].content == .source(dir.path + "/motd.txt"))
        #expect(recipe.authorizedKeys[0].keys == ["ssh-ed25519 AAAAC3Nza admin@example", "ssh-rsa AAAAB3 other"])
    }

    @Test func unknownEnumValueHasHint() {
        #expect(error(Self.minimal + "\ninitramfs: {compression: gzp}\n") == "recipe.yaml:4:26: unknown value 'gzp' (did you mean 'gzip'?)")
    }

    @Test func baseMustHaveOneKind() {
        let text = "name: t\nbase: {scratch: true, tarball: x.tar}\nkernel: {path: /etc/hostname}\n"
        #expect(error(text).hasPrefix("recipe.yaml:2:7: the base has 2 kinds (scratch, tarball); choose one"))
    }

    @Test func pathsInsideImageMustBeAbsoluteAndNotClimb() {
        #expect(error(Self.minimal + "\nremove: [etc/motd]\n") == "recipe.yaml:4:10: 'etc/motd' must be an absolute path inside the image (start with '/')")
        #expect(error(Self.minimal + "\nremove: [/etc/../../x]\n") == "recipe.yaml:4:10: '/etc/../../x' contains '..'; paths inside the image must not climb")
    }

    @Test func yamlSyntaxErrorKeepsPosition() {
        #expect(error("name: [unclosed\nbase: x\n").hasPrefix("recipe.yaml:2:5: YAML syntax: did not find expected ',' or ']'"))
    }

    @Test func duplicateKeyIsAnError() {
        #expect(error(Self.minimal + "\nname: again\n").contains("duplicate key 'name'"))
    }

    @Test func kernelNeedsExactlyOneSource() {
        let text = "name: t\nbase: {scratch: true}\nkernel: {version: 6.1}\n"
        #expect(error(text) == "recipe.yaml:3:9: the kernel has no source (use exactly one of 'from: rootfs', 'path: FILE' or 'deb: FILE')")
    }

    @Test func kernelFromScratchRootfsIsRefused() {
        let text = "name: t\nbase: {scratch: true}\nkernel: {from: rootfs}\n"
        #expect(error(text).hasPrefix("recipe.yaml:3:9: the kernel is taken from the rootfs, but the base is 'scratch'"))
    }

    @Test func packagesNeedAPackageBase() {
        #expect(error(Self.minimal + "\npackages: [vim]\n") == "recipe.yaml:4:11: 'packages' needs a base that installs packages (use base 'debs', 'mmdebstrap' or 'debootstrap')")
    }

    @Test func ownerForms() throws {
        let recipe = try load(Self.minimal + "\ndirectories:\n  - {path: /home/a, owner: \"1000:100\"}\n  - {path: /srv, owner: www-data}\n")
        #expect(recipe.directories[0].owner == Owner(user: .number(1000), group: .number(100)))
        #expect(recipe.directories[1].owner == Owner(user: .name("www-data"), group: .name("www-data")))
        #expect(error(Self.minimal + "\ndirectories:\n  - {path: /a, owner: \"a:b:c\"}\n").contains("bad owner 'a:b:c'"))
    }

    // minimal.yaml is for a host set up by scripts/setup (busybox-static, a kernel); busybox stands for that.
    @Test(.enabled(if: FileManager.default.fileExists(atPath: "/bin/busybox"), "needs a host set up by scripts/setup (busybox-static)"))
    func shippedRecipesLoad() throws {
        let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        for name in ["minimal.yaml", "minimal-arm64.yaml"] {
            let path = repo.appendingPathComponent("recipes/\(name)").path
            let recipe = try RecipeLoader.load(path: path)
            #expect(recipe.name == (name as NSString).deletingPathExtension)
        }
        let arm64 = try RecipeLoader.load(path: repo.appendingPathComponent("recipes/minimal-arm64.yaml").path)
        #expect(arm64.arch == .arm64)
        #expect(arm64.sysroot.packages == ["linux-image-arm64"])
    }

    /// The host here is what CI runs on; the foreign architecture is the other one.
    static let foreign: Architecture = Architecture.host == .arm64 ? .amd64 : .arm64

    @Test func archAndSysroot() throws {
        #expect(try load(Self.minimal).arch == Architecture.host)
        let recipe = try load(Self.minimal + "\narch: \(Self.foreign)\nsysroot: {suite: trixie, mirror: 'http://mirror.example/debian', packages: [linux-image-\(Self.foreign)-16k]}\n")
        #expect(recipe.arch == Self.foreign)
        #expect(recipe.sysroot.suite == "trixie" && recipe.sysroot.mirror == "http://mirror.example/debian")
        #expect(Sysroot.packages(for: recipe).contains("linux-image-\(Self.foreign)-16k") && Sysroot.packages(for: recipe).contains("busybox-static"))
        #expect(!Sysroot.packages(for: recipe).contains("linux-image-\(Self.foreign)"), "the recipe's own kernel replaces the default")
        #expect(Sysroot.sources(for: recipe).map(\.description) == ["http://mirror.example/debian trixie"])
        // Without a sysroot key: the architecture's generic kernel and Debian's mirror with its updates.
        let plain = try load(Self.minimal + "\narch: \(Self.foreign)\n")
        #expect(Sysroot.packages(for: plain).contains(Self.foreign.kernelPackage))
        #expect(Sysroot.sources(for: plain).first?.uri == "http://deb.debian.org/debian")
    }

    @Test func archErrorsAreLocated() {
        #expect(error(Self.minimal + "\narch: riscv64\n").hasPrefix("recipe.yaml:4:7: unknown value 'riscv64'"))
        #expect(error(Self.minimal + "\nsysroot: {suite: 'a b'}\n").hasPrefix("recipe.yaml:4:18: invalid suite 'a b'"))
        #expect(error(Self.minimal + "\nsysroot: {sute: bookworm}\n").hasPrefix("recipe.yaml:4:11: unknown key 'sute'"))
        // What a build for another architecture cannot do, at the key that asks for it.
        let run = error(Self.minimal + "\narch: \(Self.foreign)\nrun: [true]\n")
        #expect(run.hasPrefix("recipe.yaml:5:6: 'run' commands run in the image's root on this machine"), "\(run)")
        let bootstrap = error("name: t\nbase: {mmdebstrap: {suite: bookworm}}\nkernel: {from: rootfs}\narch: \(Self.foreign)\n")
        #expect(bootstrap.hasPrefix("recipe.yaml:2:7: base 'mmdebstrap' installs packages by running them"), "\(bootstrap)")
        let debs = error("name: t\nbase: {debs: {packages: [busybox]}}\nkernel: {path: /etc/hostname}\narch: \(Self.foreign)\n")
        #expect(debs.hasPrefix("recipe.yaml:2:7: 'debs' packages are resolved with this machine's apt"), "\(debs)")
    }
}
