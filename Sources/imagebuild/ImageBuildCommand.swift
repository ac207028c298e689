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
                      NodesCommand.self, ServeCommand.self, StatusCommand.self],
        defaultSubcommand: BuildCommand.self
    )
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
