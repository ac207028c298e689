import ArgumentParser
import Foundation
import ImageBuildKit

struct PackCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pack",
        abstract: "Pack a directory into a reproducible cpio (initramfs) or tar archive.",
        discussion: """
            Entries are sorted, times clamped to SOURCE_DATE_EPOCH (default 0), inode
            numbers assigned in order: the same tree always gives the same bytes.
            """)

    @Argument(help: "The directory to pack.")
    var directory: String

    @Option(name: [.customShort("o"), .long], help: "The archive to write.")
    var output: String

    @Option(help: "gzip, zstd, xz or none.")
    var compression: String = "gzip"

    @Flag(help: "Write a tar (pax) archive instead of cpio newc.")
    var tar = false

    func run() throws {
        guard let compression = Compression(rawValue: compression) else {
            fail(ValidationError("unknown compression '\(self.compression)' (gzip, zstd, xz, none)"))
        }
        let epoch = ProcessInfo.processInfo.environment["SOURCE_DATE_EPOCH"].flatMap { Int64($0) } ?? 0
        do {
            let result = try Packer.pack(directory: directory, to: output, format: tar ? .paxRestricted : .cpioNewc,
                                         compression: compression, epoch: epoch)
            FileHandle.standardError.write(Data("packed \(result.entries) entries (\(formatBytes(result.bytes))) into \(output)\n".utf8))
        } catch {
            fail(error)
        }
    }
}
