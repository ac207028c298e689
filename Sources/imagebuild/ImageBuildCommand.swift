import ArgumentParser

@main
struct ImageBuildCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "imagebuild")
    func run() throws {}
}
