import ArgumentParser
import Foundation
import ImageBuildKit

struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "List an initramfs or image: mode, owner, size, name.",
        discussion: "Reads any archive libarchive knows (cpio, tar; gzip, zstd, xz...).")

    @Argument(help: "An initramfs.img, image.tar.gz or other archive.")
    var file: String

    func run() throws {
        do {
            let reader = try ArchiveReader(path: file)
            var count = 0
            var bytes: Int64 = 0
            var out = ""
            while let entry = try reader.next() {
                count += 1
                bytes += entry.size
                var name = entry.path
                let type: Character
                switch entry.kind {
                case .regular: type = "-"
                case .directory: type = "d"
                case .symlink(let target): type = "l"; name += " -> \(target)"
                case .hardlink(let target): type = "h"; name += " link to \(target)"
                case .characterDevice(let major, let minor): type = "c"; name += " (\(major),\(minor))"
                case .blockDevice(let major, let minor): type = "b"; name += " (\(major),\(minor))"
                case .fifo: type = "p"
                case .socket: type = "s"
                }
                let owner = "\(entry.uid)/\(entry.gid)".padding(toLength: 9, withPad: " ", startingAt: 0)
                let size = String(entry.size)
                out += "\(type)\(permissionString(entry.permissions)) \(owner) \(String(repeating: " ", count: max(0, 10 - size.count)))\(size) \(name)\n"
                if out.utf8.count > 1 << 16 { FileHandle.standardOutput.write(Data(out.utf8)); out = "" }
            }
            out += "\(count) entries, \(formatBytes(bytes)) of file data\n"
            FileHandle.standardOutput.write(Data(out.utf8))
        } catch {
            fail(error)
        }
    }

    func permissionString(_ mode: UInt32) -> String {
        var chars = Array("rwxrwxrwx")
        for bit in 0..<9 where mode & (1 << (8 - bit)) == 0 { chars[bit] = "-" }
        if mode & 0o4000 != 0 { chars[2] = chars[2] == "x" ? "s" : "S" }
        if mode & 0o2000 != 0 { chars[5] = chars[5] == "x" ? "s" : "S" }
        if mode & 0o1000 != 0 { chars[8] = chars[8] == "x" ? "t" : "T" }
        return String(chars)
    }
}
