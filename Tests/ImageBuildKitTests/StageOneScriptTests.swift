import Foundation
import Testing
@testable import ImageBuildKit

/// The stage-1 shell scripts (`Sources/ImageBuildKit/Initramfs/stage1/`): linted, parsed by the
/// shells that run them, embedded unchanged, and configured by a sourced file that cannot inject.
@Suite("Stage-1 scripts")
struct StageOneScriptTests {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../Sources/ImageBuildKit/Initramfs/stage1").standardized.path
    /// File name → the text the binary carries.
    static let scripts: [(file: String, embedded: String)] = [
        ("init.sh", StageOneScripts.initScript),
        ("load_img.sh", StageOneScripts.loadImageScript),
        ("udhcpc.script", StageOneScripts.udhcpcScript),
    ]
    static let files = scripts.map(\.file)

    static func executable(_ path: String) -> Bool { FileManager.default.isExecutableFile(atPath: path) }
    static let shellcheck = ["/usr/bin/shellcheck", "/usr/local/bin/shellcheck"].first(where: executable)

    @Test("the binary carries the files of Initramfs/stage1 byte for byte", arguments: scripts.map(\.file))
    func embeddedMatchesSource(file: String) throws {
        let source = try String(contentsOfFile: Self.directory + "/" + file, encoding: .utf8)
        let embedded = try #require(Self.scripts.first { $0.file == file }).embedded
        #expect(embedded == source, "rebuild: the embedded \(file) differs from the source file")
    }

    @Test("shellcheck --shell=sh finds nothing", .enabled(if: shellcheck != nil, "shellcheck is not installed (scripts/setup installs it)"),
          arguments: files)
    func shellcheckIsClean(file: String) throws {
        // -x: /init sources /load_img.sh, which shellcheck follows (source-path=SCRIPTDIR in init.sh).
        let result = try Self.run(try #require(Self.shellcheck), ["-x", "--shell=sh", "--severity=style", file], in: Self.directory)
        #expect(result.status == 0, "shellcheck \(file):\n\(result.output)")
    }

    @Test("dash -n parses each script", .enabled(if: executable("/usr/bin/dash"), "dash is not installed"), arguments: files)
    func dashParses(file: String) throws {
        let result = try Self.run("/usr/bin/dash", ["-n", file], in: Self.directory)
        #expect(result.status == 0 && result.output.isEmpty, "dash -n \(file):\n\(result.output)")
    }

    /// Stage 1 runs them with busybox ash: the shell that matters.
    @Test("busybox sh -n parses each script", .enabled(if: executable("/usr/bin/busybox") || executable("/bin/busybox"),
                                                       "busybox is not installed (scripts/setup installs busybox-static)"),
          arguments: files)
    func busyboxParses(file: String) throws {
        let busybox = Self.executable("/usr/bin/busybox") ? "/usr/bin/busybox" : "/bin/busybox"
        let result = try Self.run(busybox, ["sh", "-n", file], in: Self.directory)
        #expect(result.status == 0 && result.output.isEmpty, "busybox sh -n \(file):\n\(result.output)")
    }

    @Test("/init sources the config file; its fallbacks are the recipe's defaults")
    func initSourcesConfigWithRecipeDefaults() {
        let script = StageOneScripts.initScript
        #expect(script.contains("[ -r \(StageOneScripts.configPath) ] && . \(StageOneScripts.configPath)\n"))
        let spec = InitramfsSpec()
        for line in ["ONFAIL=\(spec.onFail.rawValue)", "ONFAIL_DELAY=\(spec.onFailDelay)", "RETRIES=\(spec.downloadRetries)"] {
            #expect(script.contains("\n\(line)\n"), "/init's fallback \(line) is not the recipe default")
        }
        // The defaults come first, the file second, the command line last (it overrides both).
        let defaults = script.range(of: "\nRETRIES=")!.lowerBound
        let source = script.range(of: ". \(StageOneScripts.configPath)")!.lowerBound
        let cmdline = script.range(of: "$(cat /proc/cmdline)")!.lowerBound
        #expect(defaults < source && source < cmdline)
    }

    @Test("the config file sets exactly the recipe's values")
    func configFromRecipe() throws {
        let text = StageOneScripts.config(onFail: .shell, onFailDelay: 7, retries: 3)
        #expect(text.hasSuffix("ONFAIL='shell'\nONFAIL_DELAY='7'\nRETRIES='3'\n"))
        #expect(try sourced(text, ["ONFAIL", "ONFAIL_DELAY", "RETRIES"]) == ["shell", "7", "3"])
    }

    @Test("a hostile value stays a string: sourcing the config runs nothing")
    func configValuesCannotInject() throws {
        let dir = TemporaryDirectory("stage1conf")
        let marker = dir.path + "/injected"
        let hostile = ["'; touch \(marker); '", "$(touch \(marker))", "`touch \(marker)`", "a'b\"c\\d", "x\ntouch \(marker)", "", "${HOME}"]
        let text = StageOneScripts.configFile(hostile.enumerated().map { ("V\($0.offset)", $0.element) })
        #expect(try sourced(text, hostile.indices.map { "V\($0)" }) == hostile)
        #expect(!FileManager.default.fileExists(atPath: marker))
    }

    /// Sources `config` in dash (or /bin/sh) and returns the variables' values.
    private func sourced(_ config: String, _ names: [String]) throws -> [String] {
        let dir = TemporaryDirectory("stage1conf")
        let file = dir.write("stage1.conf", config)
        // NUL-separated, so values with newlines come back whole.
        let script = ". \(file)\n" + names.map { "printf '%s\\0' \"$\($0)\"" }.joined(separator: "\n")
        let shell = Self.executable("/usr/bin/dash") ? "/usr/bin/dash" : "/bin/sh"
        let result = try Self.run(shell, ["-c", script], in: dir.path)
        try #require(result.status == 0, "\(result.output)")
        return result.output.split(separator: "\0", omittingEmptySubsequences: false).dropLast().map(String.init)
    }

    /// Runs a program, returning its exit status and its stdout and stderr together.
    static func run(_ executable: String, _ arguments: [String], in directory: String) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}
