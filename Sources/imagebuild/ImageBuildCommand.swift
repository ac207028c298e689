import ArgumentParser
import Foundation
import ImageBuildKit
import Logging

@main
struct ImageBuildCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "imagebuild",
        abstract: "Build network-boot images for diskless nodes, and serve them.",
        discussion: """
            imagebuild RECIPE builds a recipe (the same as 'imagebuild build RECIPE'):
            kernel, stage-1 initramfs and stage-2 image under artifacts/<name>/.

            Quick start:
              imagebuild recipes/minimal.yaml
              imagebuild inspect artifacts/minimal/initramfs.img
            """,
        version: ImageBuildVersion.current,
        subcommands: [BuildCommand.self, ValidateCommand.self, InspectCommand.self, PackCommand.self, PublishCommand.self,
                      NodesCommand.self, ServeCommand.self, StatusCommand.self, PowerCommand.self, RebootCommand.self],
        defaultSubcommand: BuildCommand.self
    )

    /// Like the default `main`, after one check the parser cannot make: the first word is a
    /// subcommand, an option, or a recipe file that exists. Otherwise `imagebuild publsh --root x`
    /// would run `build` on a recipe called "publsh" and complain about `--root`.
    static func main() async {
        let arguments = Array(CommandLine.arguments.dropFirst())
        if let message = misspelledCommand(arguments) {
            FileHandle.standardError.write(Data("imagebuild: error: \(message)\n".utf8))
            Foundation.exit(ExitCode.validationFailure.rawValue)
        }
        if arguments.isEmpty {
            print(helpMessage())
            Foundation.exit(ExitCode.validationFailure.rawValue)
        }
        do {
            var command = try parseAsRoot(arguments)
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }

    /// Why the first argument cannot be what the user meant, or nil when it can.
    static func misspelledCommand(_ arguments: [String]) -> String? {
        guard let first = arguments.first, !first.hasPrefix("-") else { return nil }
        let names = (configuration.subcommands.compactMap { $0.configuration.commandName }) + ["help"]
        if names.contains(first) || FileManager.default.fileExists(atPath: first) { return nil }
        // A path-like word is a recipe that is not there: the build says so, with its own wording.
        if first.contains("/") || first.hasSuffix(".yaml") || first.hasSuffix(".yml") { return nil }
        let hint = closestMatch(to: first, in: names).map { " (did you mean '\($0)'?)" } ?? ""
        return "'\(first)' is neither a command nor a recipe file\(hint); commands: \(names.dropLast().joined(separator: ", "))"
    }
}

/// Options every subcommand shares.
struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error.")
    var logLevel: Logger.Level = .warning

    func makeLogger(_ label: String) -> Logger {
        var logger = Logger(label: label) { StreamLogHandler.standardError(label: $0) }
        logger.logLevel = logLevel
        return logger
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

/// Prints an error the way users read them, and exits non-zero.
func fail(_ error: Error) -> Never {
    FileHandle.standardError.write(Data("imagebuild: error: \(error)\n".utf8))
    Foundation.exit(1)
}
