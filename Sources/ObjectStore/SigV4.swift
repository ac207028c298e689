import Crypto
import Foundation

/// An access key pair for an S3-compatible store. The secret is held here and nowhere else: it signs,
/// it is never printed (`description` names the key id only), never sent, never logged.
public struct AWSCredentials: Sendable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    public let accessKeyID: String
    let secretAccessKey: String
    /// Temporary credentials (STS) also carry a session token, sent as `x-amz-security-token`.
    let sessionToken: String?

    public init(accessKeyID: String, secretAccessKey: String, sessionToken: String? = nil) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
    }

    public var description: String { "access key \(accessKeyID)" }
    public var debugDescription: String { description }
    /// `dump` and debuggers see the key id only.
    public var customMirror: Mirror { Mirror(self, children: ["accessKeyID": accessKeyID]) }
}

/// AWS Signature Version 4 (the `Authorization: AWS4-HMAC-SHA256 ...` header every S3-compatible store
/// checks), written from AWS's specification with swift-crypto's HMAC-SHA256 and SHA-256. Pure: a
/// request's parts and a time in, headers out, so it is tested against AWS's published examples
/// (`SigV4Tests`) without a network.
///
/// The steps, as AWS names them: a *canonical request* (method, URI-encoded path, sorted query, the
/// signed headers lower-cased and sorted, the payload's SHA-256), a *string to sign* (algorithm, time,
/// credential scope `DATE/REGION/SERVICE/aws4_request`, SHA-256 of the canonical request), a *signing
/// key* (HMAC chain over date, region, service and `aws4_request`, from `"AWS4" + secret`), and the
/// signature, HMAC-SHA256 of the string to sign under that key, in hex.
public struct SigV4Signer: Sendable {
    public let credentials: AWSCredentials
    public let region: String
    public let service: String

    public init(credentials: AWSCredentials, region: String, service: String = "s3") {
        self.credentials = credentials
        self.region = region
        self.service = service
    }

    /// The payload hash a request declares when its body is not hashed (not used for uploads here).
    public static let unsignedPayload = "UNSIGNED-PAYLOAD"
    /// SHA-256 of no bytes: the payload hash of a request without a body.
    public static let emptyPayloadSHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

    /// A request to sign: method, path (not yet encoded), query parameters (not yet encoded), headers.
    public struct Request: Sendable {
        public var method: String
        public var path: String
        public var query: [(name: String, value: String)]
        /// Every header to sign, `host` among them (names in any case).
        public var headers: [(name: String, value: String)]
        /// The body's SHA-256 in hex (or `unsignedPayload`).
        public var payloadSHA256: String

        public init(method: String, path: String, query: [(name: String, value: String)] = [],
                    headers: [(name: String, value: String)], payloadSHA256: String) {
            self.method = method
            self.path = path
            self.query = query
            self.headers = headers
            self.payloadSHA256 = payloadSHA256
        }
    }

    /// `20130524T000000Z`: the `x-amz-date` of `date`.
    public static func timestamp(_ date: Date) -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyyMMdd'T'HHmmss'Z'"
        return formatter.string(from: date)
    }

    /// The headers to add to `request` sent at `date`: `x-amz-date`, `x-amz-content-sha256`, the session
    /// token if any, and `Authorization`, which signs them and every header of the request.
    public func signedHeaders(for request: Request, date: Date) -> [(name: String, value: String)] {
        let time = Self.timestamp(date)
        var added: [(name: String, value: String)] = [("x-amz-date", time), ("x-amz-content-sha256", request.payloadSHA256)]
        if let token = credentials.sessionToken { added.append(("x-amz-security-token", token)) }
        var signed = request
        signed.headers += added
        added.append(("Authorization", authorization(for: signed, time: time)))
        return added
    }

    /// The `Authorization` header's value for `request`, whose headers already hold `x-amz-date` (=`time`).
    public func authorization(for request: Request, time: String) -> String {
        let date = String(time.prefix(8))
        let scope = "\(date)/\(region)/\(service)/aws4_request"
        let (canonical, signedNames) = Self.canonicalRequest(request)
        let toSign = Self.stringToSign(time: time, scope: scope, canonicalRequest: canonical)
        let signature = HMAC<SHA256>.authenticationCode(for: Data(toSign.utf8), using: signingKey(date: date))
        return "AWS4-HMAC-SHA256 Credential=\(credentials.accessKeyID)/\(scope), SignedHeaders=\(signedNames), Signature=\(Self.hex(signature))"
    }

    /// The canonical request, and the signed header names (`host;range;x-amz-date`).
    public static func canonicalRequest(_ request: Request) -> (text: String, signedHeaders: String) {
        var headers: [String: String] = [:]
        for (name, value) in request.headers {
            let key = name.lowercased()
            // Trimmed, inner runs of spaces folded to one; a repeated header joins with commas.
            let folded = value.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
                .trimmingCharacters(in: .whitespaces)
            headers[key] = headers[key].map { $0 + "," + folded } ?? folded
        }
        let names = headers.keys.sorted()
        let canonicalHeaders = names.map { "\($0):\(headers[$0]!)\n" }.joined()
        let encoded: [(name: String, value: String)] = request.query.map { (uriEncode($0.name, slash: true), uriEncode($0.value, slash: true)) }
        let sortedQuery = encoded.sorted { (a: (name: String, value: String), b: (name: String, value: String)) -> Bool in
            a.name == b.name ? a.value < b.value : a.name < b.name
        }
        let query = sortedQuery.map { "\($0.name)=\($0.value)" }.joined(separator: "&")
        let path = request.path.isEmpty ? "/" : uriEncode(request.path, slash: false)
        let signedNames = names.joined(separator: ";")
        let text = [request.method, path, query, canonicalHeaders, signedNames, request.payloadSHA256].joined(separator: "\n")
        return (text, signedNames)
    }

    public static func stringToSign(time: String, scope: String, canonicalRequest: String) -> String {
        "AWS4-HMAC-SHA256\n\(time)\n\(scope)\n\(sha256Hex(Data(canonicalRequest.utf8)))"
    }

    /// The signing key of one day: HMAC("AWS4" + secret, date) -> region -> service -> "aws4_request".
    func signingKey(date: String) -> SymmetricKey {
        var key = SymmetricKey(data: Data(("AWS4" + credentials.secretAccessKey).utf8))
        for part in [date, region, service, "aws4_request"] {
            key = SymmetricKey(data: Data(HMAC<SHA256>.authenticationCode(for: Data(part.utf8), using: key)))
        }
        return key
    }

    /// The signing key in hex, for tests against AWS's derivation example.
    public func signingKeyHex(date: String) -> String { signingKey(date: date).withUnsafeBytes { Self.hex(Array($0)) } }

    /// RFC 3986 percent-encoding as SigV4 wants it: unreserved characters stay, every other byte is
    /// `%XX` (upper case); `/` stays in paths (`slash: false`) and is encoded in query parts.
    public static func uriEncode(_ text: String, slash: Bool) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "~"):
                out.unicodeScalars.append(UnicodeScalar(byte))
            case UInt8(ascii: "/") where !slash:
                out.append("/")
            default:
                out += String(format: "%%%02X", byte)
            }
        }
        return out
    }

    public static func sha256Hex(_ data: Data) -> String { hex(SHA256.hash(data: data)) }

    static func hex<Bytes: Sequence>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        bytes.map { String(format: "%02x", $0) }.joined()
    }
}
