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
        for name in ["minimal.yaml"] {
            let path = repo.appendingPathComponent("recipes/\(name)").path
            let recipe = try RecipeLoader.load(path: path)
            #expect(recipe.name == "minimal")
        }
    }
}
