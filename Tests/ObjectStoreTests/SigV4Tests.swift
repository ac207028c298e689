import Foundation
import Testing
@testable import ObjectStore

/// The signer against AWS's published examples: the signing-key derivation of the SigV4 documentation,
/// the S3 examples of "Signature Calculations for the Authorization Header" (GET with Range, PUT with a
/// `$` in the key, a listing with a query), and `get-vanilla` of AWS's SigV4 test suite.
@Suite struct SigV4Tests {
    static let s3Example = AWSCredentials(accessKeyID: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    static let emptySHA = SigV4Signer.emptyPayloadSHA256

    @Test func signingKeyDerivation() {
        let signer = SigV4Signer(credentials: AWSCredentials(accessKeyID: "AKIDEXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
                                 region: "us-east-1", service: "iam")
        #expect(signer.signingKeyHex(date: "20120215") == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d")
    }

    @Test func s3GetObjectWithRange() {
        let signer = SigV4Signer(credentials: Self.s3Example, region: "us-east-1")
        let request = SigV4Signer.Request(method: "GET", path: "/test.txt", headers: [
            ("Host", "examplebucket.s3.amazonaws.com"), ("Range", "bytes=0-9"),
            ("x-amz-content-sha256", Self.emptySHA), ("x-amz-date", "20130524T000000Z"),
        ], payloadSHA256: Self.emptySHA)
        #expect(signer.authorization(for: request, time: "20130524T000000Z")
                == "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
    }

    @Test func s3PutObject() {
        let signer = SigV4Signer(credentials: Self.s3Example, region: "us-east-1")
        let payload = SigV4Signer.sha256Hex(Data("Welcome to Amazon S3.".utf8))
        #expect(payload == "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072")
        let request = SigV4Signer.Request(method: "PUT", path: "/test$file.text", headers: [
            ("Host", "examplebucket.s3.amazonaws.com"), ("Date", "Fri, 24 May 2013 00:00:00 GMT"),
            ("x-amz-date", "20130524T000000Z"), ("x-amz-storage-class", "REDUCED_REDUNDANCY"), ("x-amz-content-sha256", payload),
        ], payloadSHA256: payload)
        let (canonical, signed) = SigV4Signer.canonicalRequest(request)
        #expect(canonical.hasPrefix("PUT\n/test%24file.text\n\n"), "\(canonical)")
        #expect(signed == "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class")
        #expect(signer.authorization(for: request, time: "20130524T000000Z").hasSuffix("Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"))
    }

    @Test func s3ListObjectsWithAQuery() {
        let signer = SigV4Signer(credentials: Self.s3Example, region: "us-east-1")
        let request = SigV4Signer.Request(method: "GET", path: "/", query: [("prefix", "J"), ("max-keys", "2")], headers: [
            ("Host", "examplebucket.s3.amazonaws.com"), ("x-amz-date", "20130524T000000Z"), ("x-amz-content-sha256", Self.emptySHA),
        ], payloadSHA256: Self.emptySHA)
        #expect(SigV4Signer.canonicalRequest(request).text.hasPrefix("GET\n/\nmax-keys=2&prefix=J\n"))
        #expect(signer.authorization(for: request, time: "20130524T000000Z").hasSuffix("Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"))
    }

    @Test func testSuiteGetVanilla() {
        let signer = SigV4Signer(credentials: AWSCredentials(accessKeyID: "AKIDEXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
                                 region: "us-east-1", service: "service")
        let request = SigV4Signer.Request(method: "GET", path: "/", headers: [("Host", "example.amazonaws.com"), ("X-Amz-Date", "20150830T123600Z")],
                                          payloadSHA256: Self.emptySHA)
        #expect(signer.authorization(for: request, time: "20150830T123600Z")
                == "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
    }

    /// What the client adds to a request: the date, the payload hash, a session token when there is one,
    /// and the signature over all of them. The secret is in none of them, nor in the credentials' text.
    @Test func signedHeadersCarryNoSecret() throws {
        let credentials = AWSCredentials(accessKeyID: "AKID", secretAccessKey: "very-secret-value", sessionToken: "token-1")
        let signer = SigV4Signer(credentials: credentials, region: "eu-west-1")
        let date = try #require(ISO8601DateFormatter().date(from: "2026-12-06T10:20:30Z"))
        let headers = signer.signedHeaders(for: SigV4Signer.Request(method: "HEAD", path: "/boot/images/a b", headers: [("host", "s3:8333")],
                                                                     payloadSHA256: Self.emptySHA), date: date)
        let names = headers.map(\.name)
        #expect(names == ["x-amz-date", "x-amz-content-sha256", "x-amz-security-token", "Authorization"])
        #expect(headers[0].value == "20261206T102030Z")
        #expect(headers[3].value.contains("Credential=AKID/20261206/eu-west-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token, "))
        #expect(!headers.contains { $0.value.contains("very-secret") })
        #expect("\(credentials)" == "access key AKID")
        #expect(!String(reflecting: credentials).contains("very-secret"))
        var dumped = ""
        dump(credentials, to: &dumped)
        #expect(!dumped.contains("very-secret"), "\(dumped)")
        #expect(SigV4Signer.uriEncode("/boot/images/a b+c~", slash: false) == "/boot/images/a%20b%2Bc~")
        #expect(SigV4Signer.uriEncode("a/b=", slash: true) == "a%2Fb%3D")
    }
}

/// How a file is cut into parts: the configured size, the last part shorter, and never more than
/// S3's 10,000 parts (a larger file gets larger parts, whole MiB).
@Suite struct PartPlanTests {
    @Test func parts() {
        let mib: Int64 = 1 << 20
        let three = S3ImageStore.parts(size: 11 * mib + 7, partSize: 5 * mib)
        #expect(three.map(\.offset) == [0, 5 * mib, 10 * mib] && three.map(\.length) == [5 * mib, 5 * mib, mib + 7])
        #expect(S3ImageStore.parts(size: 10 * mib, partSize: 5 * mib).map(\.length) == [5 * mib, 5 * mib])
        let huge = S3ImageStore.parts(size: 1000 * 1024 * mib, partSize: 64 * mib)  // 1000 GiB: 16,000 parts of 64 MiB would be too many
        #expect(huge.count <= 10_000 && huge.count > 9_000, "\(huge.count) parts")
        #expect(huge[0].length % mib == 0 && huge[0].length > 64 * mib)
        #expect(huge.reduce(0) { $0 + $1.length } == 1000 * 1024 * mib)
        #expect(zip(huge, huge.dropFirst()).allSatisfy { $0.offset + $0.length == $1.offset })
    }
}
