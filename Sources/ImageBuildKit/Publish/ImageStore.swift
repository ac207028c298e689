import Foundation

/// Where `publish --store` puts image files besides the boot root: an object store (S3-compatible, see
/// the `ObjectStore` target) that nodes fetch their stage-2 image from, so the bytes of a boot storm
/// leave the store's many servers rather than the one boot server.
///
/// The publisher knows only this protocol: what a store is (S3, with its signing and its HTTP client)
/// stays out of ImageBuildKit, and the publish logic can be tested with any store.
public protocol ImageStore: Sendable {
    /// Makes sure `object` is in the store, whole and verified, uploading it unless an object of the
    /// same size and sha256 is already there, and returns the `http://` URL nodes fetch it from.
    /// `partStored` is called after each part (or whole object) the store has accepted: publish's
    /// fault-injection point for "killed during an upload". Throws rather than returning an object it
    /// could not verify.
    func put(_ object: StoreObject, partStored: @escaping @Sendable () -> Void) async throws -> String
}

/// One file to put in a store.
public struct StoreObject: Sendable, Equatable {
    /// Its key below the store's prefix: the boot-root path, `images/<name>/<digest>/<file>`. The
    /// digest makes keys content-addressed: a key is never given other bytes.
    public var key: String
    /// The local file (in the boot root).
    public var file: String
    public var size: Int64
    /// The file's SHA-256 (hex), as the image's command line gives it to stage 1.
    public var sha256: String

    public init(key: String, file: String, size: Int64, sha256: String) {
        self.key = key
        self.file = file
        self.size = size
        self.sha256 = sha256
    }
}
