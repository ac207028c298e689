import Crypto
import Foundation
import Testing
@testable import ImageBuildKit

/// The build cache covers the code that makes artifacts: `imageBuildCodeDigest`, which the
/// StageOneLoader plugin computes from ImageBuildKit's files and stage 1's loader source when the
/// binary is built. Recomputed here from the checkout by the same rule, so a file the plugin
/// leaves out (a new folder, a resource) shows.
@Suite struct CodeDigestTests {
    static let package = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    @Test("the code digest covers every file of ImageBuildKit and the loader's source, by path and content")
    func coversTheSources() throws {
        let fm = FileManager.default
        let root = Self.package.path
        var files = ["Sources/imagebuild-fetch/main.c"]
        let enumerator = try #require(fm.enumerator(atPath: root + "/Sources/ImageBuildKit"))
        for case let relative as String in enumerator {
            var isDirectory: ObjCBool = false
            if fm.fileExists(atPath: root + "/Sources/ImageBuildKit/" + relative, isDirectory: &isDirectory), !isDirectory.boolValue {
                files.append("Sources/ImageBuildKit/" + relative)
            }
        }
        #expect(files.count > 50)
        // "<path>\n<sha256sum's line>" per file, in path order, then the SHA-256 of all of it.
        var listing = ""
        for file in files.sorted() {
            let digest = SHA256.hash(data: try Data(contentsOf: URL(fileURLWithPath: root + "/" + file))).map { String(format: "%02x", $0) }.joined()
            listing += "\(file)\n\(digest)  -\n"
        }
        let expected = SHA256.hash(data: Data(listing.utf8)).map { String(format: "%02x", $0) }.joined()
        #expect(imageBuildCodeDigest == expected, "the plugin's digest is not the one of this checkout's ImageBuildKit")
    }
}
