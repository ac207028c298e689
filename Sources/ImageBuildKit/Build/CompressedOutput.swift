import Foundation

/// A file being written through a compressor: the archive writer streams into
/// `write`, `finish` flushes, checks the compressor and fsyncs the file.
final class CompressedOutput {
    private let sink: ByteSink

    init(path: String, compression: Compression) throws {
        let file = try FileSink(path: path, syncOnFinish: true)
        sink = try compression.makeSink(into: file)
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws { try sink.write(bytes) }
    func finish() throws { try sink.finish() }
}
