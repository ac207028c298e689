import ArgumentParser
import Foundation
import ImageBuildKit

struct ValidateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "validate",
        abstract: "Check a recipe without building it.",
        discussion: """
            Reports the first problem as FILE:LINE:COLUMN: message, and exits 1.
            For a nodes.yaml, use 'imagebuild nodes check FILE' (every error at once, and
            what differs from the published boot root).
            """)

    @Argument(help: "The recipe file (YAML).")
    var recipe: String

    @Flag(help: "Print the answer as JSON.")
    var json = false

    struct Report: Encodable {
        var file: String
        var ok: Bool
        var error: String?
        var name: String?
        var files: Int?
        var commands: Int?
        var modules: Int?
        var imageFormat: String?
    }

    func run() throws {
        do {
            let loaded = try RecipeLoader.load(path: recipe)
            if json {
                printJSON(Report(file: recipe, ok: true, name: loaded.name, files: loaded.files.count, commands: loaded.run.count,
                                 modules: loaded.initramfs.modules.count, imageFormat: loaded.image.format.rawValue))
                return
            }
            print("\(recipe): OK: '\(loaded.name)' for \(loaded.arch), \(loaded.files.count) files, \(loaded.run.count) commands, "
                  + "\(loaded.initramfs.modules.count) initramfs modules, image \(loaded.image.format.rawValue)")
        } catch {
            var message = "\(error)"
            if Self.looksLikeInventory(recipe) {
                message = "\(recipe) is a node inventory, not a recipe: check it with 'imagebuild nodes check \(recipe)'"
            }
            if json {
                printJSON(Report(file: recipe, ok: false, error: message))
                throw ExitCode.failure
            }
            fail(ValidationError(message))
        }
    }

    /// A YAML mapping with the inventory's `network` or `nodes` and none of a recipe's `name` or `base`.
    static func looksLikeInventory(_ path: String) -> Bool {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8),
              let pairs = try? YAMLValue.parse(text, file: path).pairs() else { return false }
        let keys = Set(pairs.compactMap { try? $0.key.string() })
        return (keys.contains("network") || keys.contains("nodes")) && !keys.contains("name") && !keys.contains("base")
    }
}
