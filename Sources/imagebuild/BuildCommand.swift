import ArgumentParser
import Foundation
import ImageBuildKit

struct BuildCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build",
        abstract: "Build a recipe into kernel + initramfs + stage-2 image.",
        discussion: """
            Writes artifacts/<name>/{vmlinuz,initramfs.img,image.tar.gz,cmdline,manifest.json}.
            The build happens in a private folder and is swapped into place at the end:
            a failed or interrupted build leaves the previous artifacts untouched.
            An unchanged recipe with unchanged inputs is not rebuilt (use --force).
            Output is byte-reproducible: file times are clamped to SOURCE_DATE_EPOCH
            (default: the newest modification time among the inputs).
            A recipe whose 'arch:' is not this machine's (arm64 on x86-64) takes what it
            would take from this machine from a sysroot of that architecture's Debian
            packages, fetched from the mirror (docs/recipe.md, "Other architectures").
            """)

    @Argument(help: "The recipe file (YAML).")
    var recipe: String

    @Option(name: [.customShort("o"), .long], help: "Folder that receives <name>/.")
    var out: String = "artifacts"

    @Flag(help: "Rebuild even when nothing changed.")
    var force = false

    @Flag(help: "Print a machine-readable summary (JSON) on stdout.")
    var json = false

    @Flag(help: "Keep the assembled rootfs in the work folder for inspection.")
    var keepRootfs = false

    @Option(help: "Clamp file times to this Unix time (overrides SOURCE_DATE_EPOCH).")
    var sourceDateEpoch: Int64?

    @OptionGroup var global: GlobalOptions

    func run() throws {
        let logger = global.makeLogger("imagebuild.build")
        let loaded: Recipe
        do { loaded = try RecipeLoader.load(path: recipe) } catch { fail(error) }
        var options = BuildOptions(outputRoot: out, sourceDateEpoch: sourceDateEpoch ?? ProcessInfo.processInfo.environment["SOURCE_DATE_EPOCH"].flatMap { Int64($0) }, force: force)
        options.keepRootfs = keepRootfs
        let reporter = TerminalReporter(quiet: json)
        do {
            let result = try BuildPipeline(recipe: loaded, options: options, logger: logger, reporter: reporter).run()
            reporter.finish()
            if json {
                let summary: [String: Any] = [
                    "name": result.manifest.name, "directory": result.directory, "upToDate": result.upToDate,
                    "seconds": (result.seconds * 10).rounded() / 10, "kernelVersion": result.manifest.kernelVersion,
                    "cmdline": result.manifest.cmdline,
                    "files": result.manifest.files.mapValues { ["sha256": $0.sha256, "size": $0.size] as [String: Any] },
                ]
                let data = try JSONSerialization.data(withJSONObject: summary, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
                print(String(decoding: data, as: UTF8.self))
            } else {
                // The names' column fits the longest (an arm64 build's GRUBs are longer than the rest).
                let width = max(14, result.manifest.files.keys.map(\.count).max() ?? 0)
                let files = result.manifest.files.sorted { $0.key < $1.key }
                    .map { "  \($0.key.padding(toLength: width, withPad: " ", startingAt: 0)) \(formatBytes($0.value.size).padding(toLength: 10, withPad: " ", startingAt: 0)) sha256:\($0.value.sha256.prefix(16))" }
                print((result.upToDate ? "up to date: " : "built: ") + result.directory)
                print("  \("kernel".padding(toLength: width, withPad: " ", startingAt: 0)) \(result.manifest.kernelVersion)")
                if let arch = result.manifest.arch { print("  \("arch".padding(toLength: width, withPad: " ", startingAt: 0)) \(arch)") }
                print(files.joined(separator: "\n"))
            }
        } catch {
            reporter.finish()
            fail(error)
        }
    }
}

/// Progress on a terminal: one line rewritten in place; plain lines when not a terminal.
final class TerminalReporter: BuildReporter {
    let quiet: Bool
    let tty = isatty(STDERR_FILENO) == 1
    var lastDraw = Date.distantPast
    var drawn = false

    init(quiet: Bool) { self.quiet = quiet }

    func emit(_ text: String) { FileHandle.standardError.write(Data(text.utf8)) }

    func step(_ name: String, _ detail: String) {
        guard !quiet else { return }
        if drawn { emit("\r\u{1B}[K"); drawn = false }
        emit("[\(name)] \(detail)\n")
    }

    func progress(_ label: String, done: Int64, total: Int64) {
        guard !quiet, tty, total > 0, Date().timeIntervalSince(lastDraw) > 0.1 || done == total else { return }
        lastDraw = Date()
        let fraction = Double(done) / Double(total)
        let width = 30
        let filled = Int(fraction * Double(width))
        emit("\r\u{1B}[K[\(label)] [\(String(repeating: "#", count: filled))\(String(repeating: ".", count: width - filled))] \(Int(fraction * 100))% \(formatBytes(done))/\(formatBytes(total))")
        drawn = true
    }

    func warning(_ message: String) {
        if drawn { emit("\r\u{1B}[K"); drawn = false }
        emit("warning: \(message)\n")
    }

    func finish() { if drawn { emit("\n"); drawn = false } }
}
