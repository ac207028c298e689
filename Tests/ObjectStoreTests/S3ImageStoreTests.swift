import Foundation
import ImageBuildKit
import Testing
import TestSupport
@testable import ObjectStore

/// The S3 client against a real store: SeaweedFS's `weed server` on loopback, started per test (its
/// S3 gateway answers in a few seconds), with a write identity and anonymous read on the bucket.
@Suite("S3 image store against SeaweedFS", .serialized,
       .enabled(if: SeaweedS3.unavailableReason == nil, "\(SeaweedS3.unavailableReason ?? "")"))
struct S3ImageStoreTests {
    let dir: String = {
        var bytes = Array((NSTemporaryDirectory() + "ib-s3.XXXXXX").utf8CString)
        return bytes.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }()

    /// A file of `size` pseudo-random bytes, as an object to store under `images/t/<n>/image.squashfs`.
    func object(size: Int, name: String = "a") throws -> StoreObject {
        var generator = SystemRandomNumberGenerator()
        var bytes = [UInt8](repeating: 0, count: size)
        for index in stride(from: 0, to: size, by: 8) {
            let word = generator.next() as UInt64
            for offset in 0..<min(8, size - index) { bytes[index + offset] = UInt8(truncatingIfNeeded: word >> (8 * offset)) }
        }
        let path = dir + "/\(name).img"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let info = try sha256File(path)
        return StoreObject(key: "images/t/\(info.digest.prefix(16))/image.squashfs", file: path, size: info.size, sha256: info.digest)
    }

    func settings(_ weed: SeaweedS3, prefix: String = "site", secret: String? = nil, bucket: String? = nil, partSize: Int64 = 5 << 20) -> StoreSettings {
        StoreSettings(bucket: bucket ?? weed.bucket, prefix: prefix, endpoint: weed.endpoint, region: "us-east-1",
                      credentials: AWSCredentials(accessKeyID: weed.accessKey, secretAccessKey: secret ?? weed.secretKey), partSize: partSize)
    }

    final class Lines: @unchecked Sendable {
        private let lock = NSLock()
        private var lines: [String] = []
        func add(_ line: String) { lock.withLock { lines.append(line) } }
        var all: [String] { lock.withLock { lines } }
    }

    /// One PUT below the part size, a multipart upload above it: both land whole, with their sha256 as
    /// metadata, readable anonymously; the same objects again are not uploaded a second time.
    @Test func uploadsOnceVerifiesAndSkipsWhatIsThere() async throws {
        let weed = try SeaweedS3(directory: dir + "/weed")
        defer { weed.stop() }
        let lines = Lines()
        let store = S3ImageStore(settings: settings(weed)) { lines.add($0) }
        try await store.checkAccess()
        let small = try object(size: 300_000, name: "small")
        let large = try object(size: (11 << 20) + 12_345, name: "large")  // three parts of 5 MiB
        let parts = Lines()
        for item in [small, large] {
            let url = try await store.put(item) { parts.add(item.key) }
            #expect(url == "\(weed.endpoint)/boot/site/\(item.key)")
            let head = try #require(try weed.head("site/" + item.key), "\(item.key) is not in the store")
            #expect(head["content-length"] == "\(item.size)")
            #expect(head["x-amz-meta-sha256"] == item.sha256)
            #expect(try weed.get("site/" + item.key) == FileManager.default.contents(atPath: item.file), "the stored bytes differ")
        }
        #expect(parts.all.filter { $0 == large.key }.count == 3 && parts.all.filter { $0 == small.key }.count == 1, "\(parts.all)")
        #expect(lines.all.count == 2 && lines.all.allSatisfy { $0.contains(": uploaded to s3://boot/site at \(weed.endpoint)") }, "\(lines.all)")
        #expect(!(try weed.pendingUploads()).contains("<UploadId>"), "a multipart upload was left open")

        let again = Lines()
        let second = S3ImageStore(settings: settings(weed)) { again.add($0) }
        for item in [small, large] { _ = try await second.put(item) { Issue.record("\(item.key) was uploaded again") } }
        #expect(again.all.allSatisfy { $0.contains("already in s3://boot/site") }, "\(again.all)")
        await store.shutdown()
        await second.shutdown()
    }

    /// A file that is not the image its sha256 names is never completed: the multipart upload is aborted
    /// and no object appears under its key.
    @Test func aFileThatDoesNotMatchItsSha256IsAbortedAndNothingAppears() async throws {
        let weed = try SeaweedS3(directory: dir + "/weed")
        defer { weed.stop() }
        let store = S3ImageStore(settings: settings(weed))
        var item = try object(size: 6 << 20)
        item.sha256 = String(repeating: "0", count: 64)
        do {
            _ = try await store.put(item) {}
            Issue.record("a file with the wrong sha256 was stored")
        } catch let error as StoreError {
            #expect(error.kind == .verify && error.message.contains("nothing was completed in the store"), "\(error)")
        }
        #expect(try weed.head("site/" + item.key) == nil)
        let pending = try weed.pendingUploads()
        #expect(!pending.contains("<UploadId>"), "the failed upload was not aborted: \(pending)")
        await store.shutdown()
    }

    /// Wrong secret, no such bucket, nobody listening, a bucket nodes may not read: each one line that
    /// names the store, never the secret.
    @Test func failuresAreOneLineNamingTheStoreNeverTheSecret() async throws {
        let weed = try SeaweedS3(directory: dir + "/weed")
        defer { weed.stop() }
        let wrongSecret = "wrong-" + weed.secretKey
        let denied = S3ImageStore(settings: settings(weed, secret: wrongSecret))
        await #expect { try await denied.checkAccess() } throws: { error in
            let text = "\(error)"
            return (error as? StoreError)?.kind == .denied && text.hasPrefix("s3://boot/site at \(weed.endpoint): access denied for access key \(weed.accessKey)")
                && !text.contains(wrongSecret) && !text.contains(weed.secretKey) && !text.contains("\n")
        }
        let missing = S3ImageStore(settings: settings(weed, bucket: "nothere"))
        await #expect { try await missing.checkAccess() } throws: { error in
            (error as? StoreError)?.kind == .noBucket && "\(error)".contains("no bucket 'nothere'")
        }
        let closedPort = try PortHolder(.tcp, host: "127.0.0.1").port  // released when the holder goes: nothing listens
        var unreachableSettings = settings(weed)
        unreachableSettings.endpoint = "http://127.0.0.1:\(closedPort)"
        let unreachable = S3ImageStore(settings: unreachableSettings)
        await #expect { try await unreachable.checkAccess() } throws: { error in
            (error as? StoreError)?.kind == .unreachable && "\(error)".contains("at http://127.0.0.1:\(closedPort): cannot reach the store")
        }
        // A bucket the anonymous identity may not read: uploaded, but refused before any node is sent there.
        #expect(try weed.signedCurl(["-X", "PUT", weed.endpoint + "/private"]).stdout == "200")
        let privateStore = S3ImageStore(settings: settings(weed, bucket: "private"))
        let item = try object(size: 1000)
        await #expect { _ = try await privateStore.put(item) {} } throws: { error in
            (error as? StoreError)?.kind == .verify && "\(error)".contains("nodes may not read it")
        }
        for store in [denied, missing, unreachable, privateStore] { await store.shutdown() }
    }
}
