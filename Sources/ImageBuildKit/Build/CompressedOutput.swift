import Foundation

/// A file being written through a compressor. The archive writer streams into
/// `write`; `finish` flushes and checks the compressor succeeded.
final class CompressedOutput {
    private let process: Process?
    private let handle: FileHandle
    private let path: String
    private let fd: Int32

    init(path: String, compression: Compression) throws {
        self.path = path
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        if fd < 0 { throw RootfsError.system(operation: "create", path: path, errno: errno) }
        let command: [String]?
        switch compression {
        case .gzip: command = ["gzip", "-6", "-n", "-c"]
        case .zstd: command = ["zstd", "-q", "-19", "-T2", "-c"]
        case .xz: command = ["xz", "-q", "--check=crc32", "-6", "-T2", "-c"]
        case .none: command = nil
        }
        if let command {
            guard let executable = Tool.find(command[0]) else {
                close(fd)
                throw ToolError(command: command, status: 127, stderr: "\(command[0]) not found")
            }
            let process = Process()
            process.executableURL = URL(fileURLWithPath: executable)
            process.arguments = Array(command.dropFirst())
            let pipe = Pipe()
            process.standardInput = pipe
            process.standardOutput = FileHandle(fileDescriptor: fd, closeOnDealloc: false)
            try process.run()
            self.process = process
            handle = pipe.fileHandleForWriting
        } else {
            process = nil
            handle = FileHandle(fileDescriptor: fd, closeOnDealloc: false)
        }
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        try handle.write(contentsOf: Data(bytes))
    }

    func finish() throws {
        if let process {
            try handle.close()
            process.waitUntilExit()
            if process.terminationStatus != 0 {
                throw ToolError(command: process.arguments ?? [], status: process.terminationStatus, stderr: "compressor failed")
            }
        }
        if fsync(fd) != 0 { throw RootfsError.system(operation: "fsync", path: path, errno: errno) }
        close(fd)
    }
}
