import ArgumentParser
import Foundation
import ImageBuildKit

struct ValidateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "validate",
        abstract: "Check a recipe without building it.",
        discussion: "Reports the first problem as FILE:LINE:COLUMN: message, and exits 1.")

    @Argument(help: "The recipe file (YAML).")
    var recipe: String

    func run() throws {
        do {
            let loaded = try RecipeLoader.load(path: recipe)
            print("\(recipe): OK: '\(loaded.name)', \(loaded.files.count) files, \(loaded.run.count) commands, "
                  + "\(loaded.initramfs.modules.count) initramfs modules, image \(loaded.image.format.rawValue)")
        } catch {
            fail(error)
        }
    }
}
