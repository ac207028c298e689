import Crypto
import Foundation
import ImageBuildKit
import NIOCore
import NIOHTTP1

/// `publish --store`: image files in an S3-compatible store, content-addressed like the boot root
/// (`PREFIX/images/<name>/<digest>/<file>`), each verified before publish may point a node at it.
///
/// For each image: an object already there with the same size and `x-amz-meta-sha256` is kept as it is
/// (a second publish of the same image uploads nothing). Otherwise the file goes up in one PUT, or, when
/// larger than the part size, as a multipart upload (aborted on any failure, so no orphan parts stay
/// behind). Every request signs its payload's SHA-256, so the store refuses a part that arrives altered,
/// and the whole file is hashed on the way: a file that does not hash to the image's sha256 is never
/// completed. Then the object is checked twice: HEAD (size and sha256 metadata, signed), and an
/// anonymous ranged GET of its public URL, as a node will fetch it, compared with the file's bytes.
public final class S3ImageStore: ImageStore {
    public let client: S3Client
    public var settings: StoreSettings { client.settings }
    /// Told one line per object: uploaded (size, parts, time) or already there. No secret.
    let report: @Sendable (String) -> Void
    /// Where open multipart uploads are noted while they run (`ROOT/.publish/store-uploads/`), so the
    /// next publish on this root aborts those a killed one left: they are this root's own (publish holds
    /// the root's lock), so no other publisher's upload is touched. nil: not noted.
    let uploadsDirectory: String?

    public init(settings: StoreSettings, uploadsDirectory: String? = nil, report: @escaping @Sendable (String) -> Void = { _ in }) {
        client = S3Client(settings: settings)
        self.uploadsDirectory = uploadsDirectory
        self.report = report
    }

    public func shutdown() async { await client.shutdown() }

    /// The metadata key holding the object's SHA-256 (hex): `x-amz-meta-sha256`.
    static let shaHeader = "x-amz-meta-sha256"
    /// Bytes compared at each end of the object by the anonymous check.
    static let spotCheck: Int64 = 64 << 10

    /// Checks that the bucket exists and these credentials may use it (HEAD bucket): the first request of
    /// a publish, so a wrong endpoint, key or bucket fails before anything is uploaded.
    public func checkAccess() async throws {
        let response = try await client.send(.HEAD, path: "/\(settings.bucket)")
        switch response.status {
        case 200..<300: return
        case 404: throw StoreError(.noBucket, "\(settings): no bucket '\(settings.bucket)' (create it, and make its objects readable by the nodes: docs/store.md)")
        default: throw failure(response, what: "HEAD bucket")
        }
    }

    public func put(_ object: StoreObject, partStored: @escaping @Sendable () -> Void) async throws -> String {
        let path = settings.objectPath(object.key)
        let started = Date()
        let existing = try await client.send(.HEAD, path: path)
        if existing.status == 200, matches(existing, object) {
            try await checkPublicRead(object)
            report("\(object.key): already in \(settings), \(Self.size(object.size)), verified; not uploaded again")
            return settings.publicURL(of: object.key)
        }
        guard existing.status == 200 || existing.status == 404 else { throw failure(existing, what: "HEAD \(object.key)") }
        let parts: Int
        if object.size <= settings.partSize {
            try await putWhole(object, path: path)
            partStored()
            parts = 1
        } else {
            parts = try await putMultipart(object, path: path, partStored: partStored)
        }
        let stored = try await client.send(.HEAD, path: path)
        guard stored.status == 200 else { throw failure(stored, what: "HEAD \(object.key) after the upload") }
        guard matches(stored, object) else {
            throw StoreError(.verify, "\(settings): \(object.key) is not what was uploaded (size \(stored.header("content-length") ?? "?") for \(object.size), sha256 metadata \(stored.header(Self.shaHeader) ?? "none"))")
        }
        try await checkPublicRead(object)
        let seconds = Date().timeIntervalSince(started)
        report("\(object.key): uploaded to \(settings), \(Self.size(object.size)) in \(parts) part\(parts == 1 ? "" : "s"), \(String(format: "%.1f", seconds)) s, verified")
        return settings.publicURL(of: object.key)
    }

    func matches(_ head: S3Client.Response, _ object: StoreObject) -> Bool {
        head.header("content-length").flatMap { Int64($0) } == object.size && head.header(Self.shaHeader)?.lowercased() == object.sha256.lowercased()
    }

    /// One PUT, the file streamed; its hash (computed first, and checked against the image's) signed.
    func putWhole(_ object: StoreObject, path: String) async throws {
        let digest = try sha256(ofFile: object.file, offset: 0, length: object.size)
        guard digest == object.sha256.lowercased() else { throw changedFile(object, digest) }
        let response = try await withRetries("PUT \(object.key)") {
            try await self.client.send(.PUT, path: path, headers: [(Self.shaHeader, object.sha256.lowercased()), ("content-type", "application/octet-stream")],
                                       body: .file(path: object.file, offset: 0, length: object.size), payloadSHA256: digest,
                                       timeout: Self.uploadTimeout(object.size))
        }
        guard (200..<300).contains(response.status) else { throw failure(response, what: "PUT \(object.key)") }
    }

    /// A multipart upload: create, each part hashed then streamed, the whole checked, complete. Any
    /// failure aborts the upload (best effort: a store that forgets to also expires such uploads).
    func putMultipart(_ object: StoreObject, path: String, partStored: @Sendable () -> Void) async throws -> Int {
        await abortAbandonedUploads()
        let created = try await client.send(.POST, path: path, query: [("uploads", "")],
                                            headers: [(Self.shaHeader, object.sha256.lowercased()), ("content-type", "application/octet-stream")])
        guard (200..<300).contains(created.status), let uploadID = Self.element("UploadId", in: created.body) else {
            throw failure(created, what: "create a multipart upload of \(object.key)")
        }
        let note = noteUpload(path: path, uploadID: uploadID)
        defer { if let note { unlink(note) } }
        do {
            var whole = SHA256()
            var etags: [String] = []
            for (index, part) in Self.parts(size: object.size, partSize: settings.partSize).enumerated() {
                let (offset, length, number) = (part.offset, part.length, index + 1)
                let digest = try sha256(ofFile: object.file, offset: offset, length: length) { whole.update(bufferPointer: $0) }
                let query = [(name: "partNumber", value: "\(number)"), (name: "uploadId", value: uploadID)]
                let response = try await withRetries("PUT part \(number) of \(object.key)") {
                    try await self.client.send(.PUT, path: path, query: query, body: .file(path: object.file, offset: offset, length: length),
                                               payloadSHA256: digest, timeout: Self.uploadTimeout(length))
                }
                guard (200..<300).contains(response.status), let etag = response.header("etag") else {
                    throw failure(response, what: "PUT part \(number) of \(object.key)")
                }
                etags.append(etag)
                partStored()
            }
            let digest = SigV4Signer.hex(whole.finalize())
            guard digest == object.sha256.lowercased() else { throw changedFile(object, digest) }
            let parts = etags.enumerated().map { "<Part><PartNumber>\($0.offset + 1)</PartNumber><ETag>\(Self.xmlEscaped($0.element))</ETag></Part>" }
            let body = Data("<CompleteMultipartUpload>\(parts.joined())</CompleteMultipartUpload>".utf8)
            let completed = try await client.send(.POST, path: path, query: [("uploadId", uploadID)], headers: [("content-type", "application/xml")],
                                                  body: .bytes(body), payloadSHA256: SigV4Signer.sha256Hex(body), timeout: .minutes(10))
            // S3 may answer 200 and still fail the completion in its body.
            guard (200..<300).contains(completed.status), Self.element("Error", in: completed.body) == nil else {
                throw failure(completed, what: "complete the multipart upload of \(object.key)")
            }
            return etags.count
        } catch {
            _ = try? await client.send(.DELETE, path: path, query: [("uploadId", uploadID)])
            throw error
        }
    }

    /// S3's limit on the parts of one upload.
    static let maximumParts: Int64 = 10_000

    /// The parts of a multipart upload of `size` bytes: `partSize` each (the last one shorter), or, for a
    /// file that would need more than 10,000 of them, the smallest whole number of MiB that fits.
    static func parts(size: Int64, partSize: Int64) -> [(offset: Int64, length: Int64)] {
        var part = partSize
        if (size + part - 1) / part > maximumParts {
            let mib: Int64 = 1 << 20
            part = ((size + maximumParts - 1) / maximumParts + mib - 1) / mib * mib
        }
        return stride(from: Int64(0), to: size, by: Int(part)).map { ($0, min(part, size - $0)) }
    }

    /// Notes an open upload (path and id, one file each) while it runs; the file's path, nil when not noted.
    func noteUpload(path: String, uploadID: String) -> String? {
        guard let directory = uploadsDirectory else { return nil }
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let file = directory + "/" + UUID().uuidString
        guard FileManager.default.createFile(atPath: file, contents: Data("\(path)\n\(uploadID)\n".utf8)) else { return nil }
        return file
    }

    /// Aborts the uploads a publish killed on this root left open (best effort: one that fails stays
    /// noted for the next publish, and stores also expire such uploads themselves).
    func abortAbandonedUploads() async {
        guard let directory = uploadsDirectory else { return }
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
            let file = directory + "/" + name
            let lines = ((try? String(contentsOfFile: file, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
            guard lines.count == 2 else { unlink(file); continue }
            guard lines[0].hasPrefix("/\(settings.bucket)/") else { continue }  // another bucket's: left for a publish to it
            let response = try? await client.send(.DELETE, path: lines[0], query: [("uploadId", lines[1])])
            if let status = response?.status, (200..<300).contains(status) || status == 404 {
                unlink(file)
                report("aborted the upload a killed publish left open (\(lines[0].dropFirst(settings.bucket.count + 2)))")
            }
        }
    }

    /// A node's view: the object's first and last bytes fetched from its public URL without credentials
    /// and compared with the file's. Catches a bucket nodes may not read before any node is sent there.
    func checkPublicRead(_ object: StoreObject) async throws {
        let url = settings.publicURL(of: object.key)
        guard object.size > 0 else { return }
        var ranges: [ClosedRange<Int64>] = [0...(min(Self.spotCheck, object.size) - 1)]
        if object.size > Self.spotCheck { ranges.append((object.size - Self.spotCheck)...(object.size - 1)) }
        let fd = open(object.file, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw StoreError(.verify, "\(object.file): cannot be read") }
        defer { close(fd) }
        for range in ranges {
            let response = try await client.anonymousGet(url, range: range)
            guard response.status == 206 || (response.status == 200 && range.count == Int(object.size)) else {
                let why = response.status == 403 || response.status == 401
                    ? "nodes may not read it: allow anonymous GET on the bucket or prefix (docs/store.md)"
                    : "HTTP \(response.status)\(response.errorText.map { " \($0)" } ?? "")"
                throw StoreError(.verify, "\(settings): \(url) as a node fetches it: \(why)")
            }
            var local = [UInt8](repeating: 0, count: range.count)
            let read = local.withUnsafeMutableBytes { pread(fd, $0.baseAddress, range.count, off_t(range.lowerBound)) }
            guard read == range.count, Data(local) == response.body else {
                throw StoreError(.verify, "\(settings): \(url) as a node fetches it: bytes \(range.lowerBound)-\(range.upperBound) differ from \(object.file)")
            }
        }
    }

    /// Runs `body` again (at most 3 times in all, after 1 and 2 s) when the store answered 5xx or the
    /// connection failed: an upload of gigabytes should not fail for one dropped connection.
    func withRetries(_ what: String, _ body: () async throws -> S3Client.Response) async throws -> S3Client.Response {
        var attempt = 1
        while true {
            do {
                let response = try await body()
                if response.status >= 500 && attempt < 3 {
                    try await Task.sleep(for: .seconds(attempt))
                    attempt += 1
                    continue
                }
                return response
            } catch let error as StoreError where error.kind == .unreachable && attempt < 3 {
                try await Task.sleep(for: .seconds(attempt))
                attempt += 1
            }
        }
    }

    /// An answer that is not success, as one line naming the store (never the request's headers).
    func failure(_ response: S3Client.Response, what: String) -> StoreError {
        let detail = response.errorText.map { " (\($0))" } ?? ""
        switch response.status {
        case 401, 403:
            return StoreError(.denied, "\(settings): access denied for \(settings.credentials) to \(what): HTTP \(response.status)\(detail); check the key, its secret and its permissions on bucket '\(settings.bucket)'")
        case 404 where response.errorText?.hasPrefix("NoSuchBucket") == true:
            return StoreError(.noBucket, "\(settings): no bucket '\(settings.bucket)'")
        default:
            return StoreError(.refused, "\(settings): \(what): HTTP \(response.status)\(detail)")
        }
    }

    func changedFile(_ object: StoreObject, _ digest: String) -> StoreError {
        StoreError(.verify, "\(object.file): sha256 \(digest.prefix(16))... is not the image's \(object.sha256.prefix(16))... (changed in the boot root?); nothing was completed in the store")
    }

    /// Generous: 1 MB/s at least, and ten minutes for anything.
    static func uploadTimeout(_ size: Int64) -> TimeAmount { .seconds(max(600, size / 1_000_000)) }

    static func size(_ bytes: Int64) -> String {
        bytes >= 1 << 20 ? String(format: "%.1f MiB", Double(bytes) / Double(1 << 20)) : "\(bytes) bytes"
    }

    static func element(_ name: String, in body: Data) -> String? {
        let text = String(decoding: body, as: UTF8.self)
        guard let start = text.range(of: "<\(name)>"), let end = text.range(of: "</\(name)>", range: start.upperBound..<text.endIndex) else { return nil }
        return String(text[start.upperBound..<end.lowerBound])
    }

    static func xmlEscaped(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }
}
