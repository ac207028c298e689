import CArchive
import Foundation

/// A pigz-style gzip writer: the input is cut into fixed-size blocks that
/// worker threads deflate in parallel, and the results are written in order.
///
/// Each block is raw deflate primed with the 32 KiB of input before it
/// (`deflateSetDictionary`), so matches may reach back across block
/// boundaries as in a single-threaded stream, and ends on a byte boundary
/// (`Z_SYNC_FLUSH`; the last block `Z_FINISH`), so the compressed blocks can be
/// concatenated. Block boundaries sit at fixed multiples of `blockSize` and the
/// last block is only known at `finish()`, so the output depends on the input
/// bytes, the level and the block size only: not on the thread count, nor on
/// how the caller cuts its writes, nor on scheduling.
///
/// The header is the one `gzip -n` writes (no name, MTIME 0, OS 3 = Unix),
/// so identical input gives identical files.
///
/// Memory is bounded: at most `2 * threads + 2` blocks are in flight, each
/// holding its input (32 KiB window + block) and a worst-case output buffer,
/// all allocated once and reused, as are the workers' `z_stream`s. When all
/// blocks are busy, `write` waits for the oldest one and writes it out, so a
/// 500 MB cpio stream goes through in a few MiB of memory.
///
/// The sink is called only on the thread that calls `write`/`finish`, never
/// concurrently, and never while a lock is held. Not thread-safe itself: use
/// from one thread at a time (libarchive's write callback does).
public final class ParallelGzipWriter: ByteSink {
    public static let defaultBlockSize = 128 << 10
    /// Deflate's window: how much preceding input each block is primed with.
    static let windowSize = 32 << 10

    public let level: Int32
    /// zlib's hash-chain limit when overridden (see `init`), else nil.
    public let maxChain: Int32?
    public let blockSize: Int
    public let threads: Int

    private let sink: (UnsafeRawBufferPointer) throws -> Void
    private let pool: GzipWorkPool
    private let maxJobs: Int
    private var allocatedJobs = 0
    /// The block being filled by `write`; owned by this thread until submitted.
    private var current: GzipJob?
    /// Submitted blocks in input order; only this thread touches the array,
    /// the workers only flip `done` on its elements (under the pool's lock).
    private var inFlight: [GzipJob] = []
    private var inFlightHead = 0
    private var free: [GzipJob] = []
    private var crc: UInt = 0
    private var totalIn: UInt64 = 0
    private var headerWritten = false
    private var failure: Error?
    private var finished = false

    /// - Parameters:
    ///   - level: zlib level 0...9; 6 is gzip's default.
    ///   - maxChain: if set, overrides the level's hash-chain limit (zlib's
    ///     `max_chain`, 128 at level 6) through `deflateTune`, keeping the
    ///     level's other parameters. About half of deflate's time at level 6
    ///     goes to walking these chains (perf: zlib's longest_match); 64 cuts
    ///     about 19% of the instructions for 0.3-0.5% more output (measured on
    ///     cpios of kernel modules, locales and gcc's libraries, still within
    ///     0.5% of `gzip -6`). nil keeps zlib's parameters for the level, the
    ///     ones gzip and pigz use.
    ///   - blockSize: input bytes per block; pigz uses 128 KiB. Smaller blocks
    ///     cost ratio (5 bytes of sync marker plus a fresh Huffman table each).
    ///   - threads: compression threads; the default is the active processor count.
    ///   - sink: receives the gzip stream, in order, on the caller's thread.
    public init(
        level: Int32 = 6, maxChain: Int32? = nil, blockSize: Int = ParallelGzipWriter.defaultBlockSize,
        threads: Int = ProcessInfo.processInfo.activeProcessorCount,
        sink: @escaping (UnsafeRawBufferPointer) throws -> Void
    ) throws {
        guard (0...9).contains(level) else {
            throw CompressionError.invalidParameter(name: "gzip level", value: "\(level)", reason: "must be 0...9")
        }
        if let maxChain, !(1...4096).contains(maxChain) || level < 4 {
            throw CompressionError.invalidParameter(
                name: "gzip max chain", value: "\(maxChain)",
                reason: level < 4 ? "only levels 4...9 search hash chains lazily" : "must be 1...4096")
        }
        guard blockSize >= 1024, blockSize <= 1 << 30 else {
            throw CompressionError.invalidParameter(name: "block size", value: "\(blockSize)", reason: "must be 1 KiB...1 GiB")
        }
        guard threads >= 1, threads <= 256 else {
            throw CompressionError.invalidParameter(name: "thread count", value: "\(threads)", reason: "must be 1...256")
        }
        self.level = level
        self.maxChain = maxChain
        self.blockSize = blockSize
        self.threads = threads
        self.sink = sink
        // Two blocks per worker keeps every worker busy while the caller
        // fills the next one and writes out the oldest; two more cover the
        // block being filled and the one being written.
        self.maxJobs = 2 * threads + 2
        self.pool = GzipWorkPool()
        inFlight.reserveCapacity(maxJobs)
        free.reserveCapacity(maxJobs)
        for index in 0..<threads {
            pool.startWorker(name: "gzip-\(index)", level: level, maxChain: maxChain)
        }
    }

    /// Convenience: compresses into another sink, which is finished by `finish()`.
    public convenience init(
        level: Int32 = 6, maxChain: Int32? = nil, blockSize: Int = ParallelGzipWriter.defaultBlockSize,
        threads: Int = ProcessInfo.processInfo.activeProcessorCount, into downstream: ByteSink
    ) throws {
        try self.init(level: level, maxChain: maxChain, blockSize: blockSize, threads: threads, sink: { try downstream.write($0) })
        self.downstream = downstream
    }
    private var downstream: ByteSink?

    deinit {
        // Abandoned without finish (an error upstream): stop the workers; they
        // drop queued blocks and exit after the one in hand.
        pool.shutdown()
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        try checkOpen()
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        do {
            var offset = 0
            while offset < bytes.count {
                let job: GzipJob
                if let current, current.count < blockSize {
                    job = current
                } else if let full = current {
                    // More input follows, so the full block is not the last one:
                    // only now can it be submitted (see the type's comment).
                    let next = try acquireJob()
                    next.primeDictionary(from: full)
                    submit(full, last: false)
                    current = next
                    job = next
                } else {
                    job = try acquireJob()
                    current = job
                }
                let n = min(blockSize - job.count, bytes.count - offset)
                job.dataStart.advanced(by: job.count).copyMemory(from: base + offset, byteCount: n)
                job.count += n
                offset += n
            }
            totalIn &+= UInt64(bytes.count)
        } catch {
            throw fail(error)
        }
    }

    /// Compresses what is left, writes the gzip trailer and waits for the
    /// workers to exit; then finishes the downstream sink if there is one.
    public func finish() throws {
        try checkOpen()
        do {
            let last = try current ?? acquireJob()
            current = nil
            submit(last, last: true)
            while inFlightHead < inFlight.count {
                try writeOldest(waiting: true)
            }
            var trailer = (UInt32(truncatingIfNeeded: crc).littleEndian, UInt32(truncatingIfNeeded: totalIn).littleEndian)
            try withUnsafeBytes(of: &trailer) { try sink($0) }
            finished = true
            pool.shutdown()
            pool.waitForWorkers()
            try downstream?.finish()
        } catch {
            throw fail(error)
        }
    }

    private func checkOpen() throws {
        if let failure { throw failure }
        if finished { throw CompressionError.sinkClosed }
    }

    /// Records the first error, stops the workers and returns the error to throw.
    private func fail(_ error: Error) -> Error {
        if failure == nil { failure = error }
        pool.shutdown()
        return failure!
    }

    /// A free block: recycled, newly allocated while under the bound, or the
    /// oldest in-flight one once written out.
    private func acquireJob() throws -> GzipJob {
        while true {
            // Write out whatever is already done first, to keep output flowing.
            if inFlightHead < inFlight.count, pool.isDone(inFlight[inFlightHead]) {
                try writeOldest(waiting: false)
                continue
            }
            if let job = free.popLast() {
                job.reset()
                return job
            }
            if allocatedJobs < maxJobs {
                allocatedJobs += 1
                return GzipJob(blockSize: blockSize)
            }
            try writeOldest(waiting: true)
        }
    }

    private func submit(_ job: GzipJob, last: Bool) {
        job.isLast = last
        if inFlightHead == inFlight.count {
            inFlight.removeAll(keepingCapacity: true)
            inFlightHead = 0
        } else if inFlightHead >= maxJobs {
            inFlight.removeFirst(inFlightHead)
            inFlightHead = 0
        }
        inFlight.append(job)
        pool.enqueue(job)
    }

    /// Writes the oldest submitted block to the sink, waiting for it if asked.
    private func writeOldest(waiting: Bool) throws {
        let job = inFlight[inFlightHead]
        if waiting { pool.waitUntilDone(job) }
        inFlightHead += 1
        if let error = job.error { throw error }
        if !headerWritten {
            headerWritten = true
            // gzip -n: ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL OS=3 (Unix).
            let xfl: UInt8 = level == 9 ? 2 : (level == 1 ? 4 : 0)
            var header: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
                (0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 3)
            try withUnsafeBytes(of: &header) { try sink($0) }
        }
        try sink(UnsafeRawBufferPointer(start: job.output, count: job.outputCount))
        crc = crc32_combine(crc, job.crc, off_t(job.count))
        free.append(job)
    }
}

/// One block: its input (preceded by up to 32 KiB of dictionary), its
/// compressed output and CRC.
///
/// `@unchecked Sendable`: ownership moves between threads through
/// `GzipWorkPool`'s lock. The writer's thread fills it, hands it to the queue;
/// exactly one worker compresses it and marks it done under the lock; only
/// then does the writer's thread read the output. The next block's dictionary
/// is copied from a full block before that block is submitted, so no block
/// is ever touched by two threads at once.
final class GzipJob: @unchecked Sendable {
    let input: UnsafeMutableRawPointer
    let dataStart: UnsafeMutableRawPointer
    var dictionaryCount = 0
    var count = 0
    var isLast = false
    var output: UnsafeMutableRawPointer
    var outputCapacity: Int
    var outputCount = 0
    var crc: UInt = 0
    var error: CompressionError?
    /// Guarded by the pool's lock.
    var done = false

    init(blockSize: Int) {
        input = .allocate(byteCount: ParallelGzipWriter.windowSize + blockSize, alignment: 64)
        dataStart = input + ParallelGzipWriter.windowSize
        // Worst case of deflate for one block (stored blocks) plus the empty
        // stored block of the sync flush; a full output buffer grows anyway.
        outputCapacity = Int(compressBound(uLong(blockSize))) + 64
        output = .allocate(byteCount: outputCapacity, alignment: 64)
    }

    deinit {
        input.deallocate()
        output.deallocate()
    }

    func reset() {
        dictionaryCount = 0
        count = 0
        isLast = false
        outputCount = 0
        crc = 0
        error = nil
        done = false
    }

    /// Copies the last 32 KiB of input up to the end of `previous` in front of
    /// this block's data. Works for blocks smaller than the window too, since
    /// `previous` carries its own dictionary.
    func primeDictionary(from previous: GzipJob) {
        let available = previous.dictionaryCount + previous.count
        let n = min(ParallelGzipWriter.windowSize, available)
        let end = previous.dataStart + previous.count
        (dataStart - n).copyMemory(from: UnsafeRawPointer(end - n), byteCount: n)
        dictionaryCount = n
    }

    /// Deflates this block with a worker's stream. Allocation-free except when
    /// the output outgrows the worst-case buffer (it cannot with zlib's bound).
    func compress(with stream: UnsafeMutablePointer<z_stream>, tuning: DeflateTuning?) {
        var status = deflateReset(stream)
        guard status == Z_OK else { return setError("deflateReset", status, stream) }
        if let tuning {
            // deflateReset reloads the level's parameters, so tune every block.
            status = deflateTune(stream, tuning.goodLength, tuning.maxLazy, tuning.niceLength, tuning.maxChain)
            guard status == Z_OK else { return setError("deflateTune", status, stream) }
        }
        if dictionaryCount > 0 {
            let dictionary = (dataStart - dictionaryCount).assumingMemoryBound(to: Bytef.self)
            status = deflateSetDictionary(stream, dictionary, uInt(dictionaryCount))
            guard status == Z_OK else { return setError("deflateSetDictionary", status, stream) }
        }
        let data = dataStart.assumingMemoryBound(to: Bytef.self)
        crc = crc32(0, data, uInt(count))
        stream.pointee.next_in = data
        stream.pointee.avail_in = uInt(count)
        stream.pointee.next_out = output.assumingMemoryBound(to: Bytef.self)
        stream.pointee.avail_out = uInt(outputCapacity)
        let flush = isLast ? Z_FINISH : Z_SYNC_FLUSH
        while true {
            status = deflate(stream, flush)
            if status == Z_STREAM_END { break }
            guard status == Z_OK || status == Z_BUF_ERROR else { return setError("deflate", status, stream) }
            if stream.pointee.avail_out > 0 && stream.pointee.avail_in == 0 && flush == Z_SYNC_FLUSH { break }
            if stream.pointee.avail_out == 0 { growOutput(stream) }
        }
        outputCount = Int(stream.pointee.total_out)
    }

    private func growOutput(_ stream: UnsafeMutablePointer<z_stream>) {
        let produced = Int(stream.pointee.total_out)
        let bigger = UnsafeMutableRawPointer.allocate(byteCount: outputCapacity * 2, alignment: 64)
        bigger.copyMemory(from: output, byteCount: produced)
        output.deallocate()
        output = bigger
        outputCapacity *= 2
        stream.pointee.next_out = (output + produced).assumingMemoryBound(to: Bytef.self)
        stream.pointee.avail_out = uInt(outputCapacity - produced)
    }

    private func setError(_ call: String, _ code: Int32, _ stream: UnsafeMutablePointer<z_stream>) {
        let message = stream.pointee.msg.map { String(cString: $0) } ?? ""
        error = .zlib(call: call, code: code, message: message)
    }
}

/// The queue between the writer and its worker threads, and the lock that
/// guards it.
///
/// `@unchecked Sendable`: every mutable property (`pending`, `pendingHead`,
/// `stopping`, `liveWorkers`, and the `done` flag of every job) is read and
/// written only with `condition` locked. One condition variable serves both
/// directions (work available, block done); waiters re-check their predicate,
/// so `broadcast` is enough and costs little at one wake-up per 128 KiB block.
final class GzipWorkPool: @unchecked Sendable {
    private let condition = NSCondition()
    private var pending: [GzipJob] = []
    private var pendingHead = 0
    private var stopping = false
    private var liveWorkers = 0

    func startWorker(name: String, level: Int32, maxChain: Int32?) {
        condition.lock()
        liveWorkers += 1
        condition.unlock()
        let thread = Thread { [self] in
            runWorker(level: level, tuning: maxChain.map { DeflateTuning(level: level, maxChain: $0) })
        }
        thread.name = name
        thread.start()
    }

    private func runWorker(level: Int32, tuning: DeflateTuning?) {
        let stream = UnsafeMutablePointer<z_stream>.allocate(capacity: 1)
        stream.initialize(to: z_stream())
        // Raw deflate (negative window bits): the writer frames the gzip itself.
        // memLevel 8 and the default strategy are what gzip and pigz use.
        let initStatus = ib_deflateInit2(stream, level, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY)
        defer {
            if initStatus == Z_OK { deflateEnd(stream) }
            stream.deinitialize(count: 1)
            stream.deallocate()
            condition.lock()
            liveWorkers -= 1
            condition.broadcast()
            condition.unlock()
        }
        while let job = nextJob() {
            if initStatus == Z_OK {
                job.compress(with: stream, tuning: tuning)
            } else {
                job.error = .zlib(call: "deflateInit2", code: initStatus, message: "")
            }
            condition.lock()
            job.done = true
            condition.broadcast()
            condition.unlock()
        }
    }

    /// The next queued block, or nil once the pool is stopping.
    private func nextJob() -> GzipJob? {
        condition.lock()
        defer { condition.unlock() }
        while true {
            if stopping { return nil }
            if pendingHead < pending.count {
                let job = pending[pendingHead]
                pendingHead += 1
                if pendingHead == pending.count {
                    pending.removeAll(keepingCapacity: true)
                    pendingHead = 0
                }
                return job
            }
            condition.wait()
        }
    }

    func enqueue(_ job: GzipJob) {
        condition.lock()
        pending.append(job)
        condition.broadcast()
        condition.unlock()
    }

    func isDone(_ job: GzipJob) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        return job.done
    }

    func waitUntilDone(_ job: GzipJob) {
        condition.lock()
        while !job.done { condition.wait() }
        condition.unlock()
    }

    /// Tells the workers to exit; queued blocks are dropped. Idempotent.
    func shutdown() {
        condition.lock()
        stopping = true
        condition.broadcast()
        condition.unlock()
    }

    func waitForWorkers() {
        condition.lock()
        while liveWorkers > 0 { condition.wait() }
        condition.unlock()
    }
}

/// The arguments of `deflateTune`: a level's parameters from zlib's
/// `configuration_table` (deflate.c, unchanged since zlib 1.2) with the chain
/// limit replaced. zlib does not export the table, hence the copy.
struct DeflateTuning: Sendable {
    let goodLength: Int32
    let maxLazy: Int32
    let niceLength: Int32
    let maxChain: Int32

    init(level: Int32, maxChain: Int32) {
        let table: [Int32: (Int32, Int32, Int32)] = [
            4: (4, 4, 16), 5: (8, 16, 32), 6: (8, 16, 128), 7: (8, 32, 128), 8: (32, 128, 258), 9: (32, 258, 258),
        ]
        let (good, lazy, nice) = table[level] ?? (8, 16, 128)
        goodLength = good
        maxLazy = lazy
        niceLength = nice
        self.maxChain = maxChain
    }
}
