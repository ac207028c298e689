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

    @Flag(help: "Print one JSON object per entry (JSON Lines: path, type, mode, uid, gid, size, mtime, target).")
    var json = false

    struct Line: Encodable {
        var path: String
        var type: String
        var mode: String
        var uid: UInt32
        var gid: UInt32
        var size: Int64
        var mtime: Int64
        var target: String?
        var device: String?
    }

    func run() throws {
        do {
            let reader = try ArchiveReader(path: file)
            var count = 0
            var bytes: Int64 = 0
            var out = ""
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            while let entry = try reader.next() {
                count += 1
                // Saturating: sizes come from the archive, and two near 2^63 overflowed (a trap, exit 132).
                let (sum, overflow) = bytes.addingReportingOverflow(entry.size)
                bytes = overflow ? .max : sum
                if json {
                    out += String(decoding: try encoder.encode(Self.line(entry)), as: UTF8.self) + "\n"
                    if out.utf8.count > 1 << 16 { FileHandle.standardOutput.write(Data(out.utf8)); out = "" }
                    continue
                }
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
            if !json { out += "\(count) entries, \(formatBytes(bytes)) of file data\n" }
            FileHandle.standardOutput.write(Data(out.utf8))
        } catch {
            fail(error)
        }
    }

    static func line(_ entry: ArchiveEntryHeader) -> Line {
        var line = Line(path: entry.path, type: "file", mode: String(entry.permissions, radix: 8), uid: entry.uid, gid: entry.gid,
                        size: entry.size, mtime: entry.mtime)
        switch entry.kind {
        case .regular: break
        case .directory: line.type = "directory"
        case .symlink(let target): line.type = "symlink"; line.target = target
        case .hardlink(let target): line.type = "hardlink"; line.target = target
        case .characterDevice(let major, let minor): line.type = "char"; line.device = "\(major),\(minor)"
        case .blockDevice(let major, let minor): line.type = "block"; line.device = "\(major),\(minor)"
        case .fifo: line.type = "fifo"
        case .socket: line.type = "socket"
        }
        return line
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
