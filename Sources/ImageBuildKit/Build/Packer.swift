import Foundation

/// Packs a directory into a reproducible initramfs-style archive: the same
/// writer the build uses, exposed for hand-made trees and for benchmarks.
public enum Packer {
    public static func pack(directory: String, to output: String, format: ArchiveFormat = .cpioNewc,
                            compression: Compression, epoch: Int64) throws -> (entries: Int, bytes: Int64) {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw RootfsError.system(operation: "pack", path: directory, errno: ENOTDIR)
        }
        let tree = try RootfsTree(root: URL(fileURLWithPath: directory).standardizedFileURL.path)
        var plan = ArchivePlan(epoch: epoch)
        try plan.addTree(tree, hardlinks: format == .paxRestricted)
        let temporary = output + ".tmp-\(getpid())"
        do {
            // A tar is a stage-2 image (zstd's image settings); a cpio is an initramfs.
            let sink = try CompressedOutput(path: temporary, compression: compression,
                                            purpose: format == .paxRestricted ? .image : .initramfs)
            try plan.write(format: format, sink: sink.write)
            try sink.finish()
            if rename(temporary, output) != 0 { throw RootfsError.system(operation: "rename to", path: output, errno: errno) }
        } catch {
            unlink(temporary)
            throw error
        }
        return (plan.count, plan.contentBytes)
    }
}
