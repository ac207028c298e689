import Foundation
import ImageBuildKit

/// Why a store could not be used: what went wrong, and where. Never holds a secret: messages name the
/// endpoint, the bucket and the access key id at most.
public struct StoreError: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable {
        /// The settings: a missing credential, a malformed URL, a file others can read.
        case config
        /// The endpoint did not answer (refused, no route, time-out).
        case unreachable
        /// The store refused the credentials or the operation (401, 403, signature mismatch).
        case denied
        /// No such bucket (404 on the bucket).
        case noBucket
        /// Any other answer the store should not give.
        case refused
        /// The stored object is not what was uploaded, or nodes could not read it.
        case verify
    }

    public var kind: Kind
    public var message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { message }
}

/// Where `publish --store s3://BUCKET/PREFIX` puts images, and how it gets in: the endpoint, region
/// and credentials come from `--store-config FILE` (YAML) or the usual AWS environment variables,
/// never from the command line, so no secret shows in `ps`, a shell history or a log.
///
/// Addressing is path-style (`ENDPOINT/BUCKET/KEY`), which every self-hosted store (Ceph RGW, MinIO,
/// SeaweedFS) answers without wildcard DNS. Nodes fetch anonymously from `publicURL` (default
/// `ENDPOINT/BUCKET`) over plain http: stage 1 has no TLS, and verifies the image's sha256 itself.
public struct StoreSettings: Sendable, CustomStringConvertible {
    public var bucket: String
    /// Key prefix without leading or trailing `/` ("" for the bucket's top).
    public var prefix: String
    /// `http(s)://host[:port]`, no path.
    public var endpoint: String
    public var region: String
    public var credentials: AWSCredentials
    /// What nodes fetch objects under: `http://host[:port]/bucket` unless set.
    public var publicURL: String
    /// Files larger than this go up in parts of this size (S3 allows 5 MiB to 5 GiB a part and 10,000
    /// parts: with 64 MiB parts, objects up to 625 GiB).
    public var partSize: Int64

    public static let defaultPartSize: Int64 = 64 << 20
    public static let defaultRegion = "us-east-1"

    /// `s3://bucket/prefix at http://endpoint`: for messages. No secret.
    public var description: String { "s3://\(bucket)\(prefix.isEmpty ? "" : "/" + prefix) at \(endpoint)" }

    /// The full key of `key` (`images/...`) under the prefix.
    public func objectKey(_ key: String) -> String { prefix.isEmpty ? key : prefix + "/" + key }

    /// The path-style request path of `key`: `/bucket/prefix/key`.
    public func objectPath(_ key: String) -> String { "/\(bucket)/\(objectKey(key))" }

    /// The URL nodes fetch `key` from.
    public func publicURL(of key: String) -> String { publicURL + "/" + SigV4Signer.uriEncode(objectKey(key), slash: false) }

    public init(bucket: String, prefix: String, endpoint: String, region: String, credentials: AWSCredentials,
                publicURL: String? = nil, partSize: Int64 = StoreSettings.defaultPartSize) {
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint = endpoint
        self.region = region
        self.credentials = credentials
        self.publicURL = publicURL ?? endpoint + "/" + bucket
        self.partSize = partSize
    }

    /// The keys `--store-config` may hold.
    public static let configKeys = ["endpoint", "region", "access_key_id", "secret_access_key", "secret_access_key_file",
                                    "session_token", "public_url", "part_size_mib"]

    /// The settings of `--store URL` with `--store-config configFile` (if given) and `environment`.
    /// The file's values come first; the environment fills in what it leaves out:
    /// `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`, `AWS_REGION` or `AWS_DEFAULT_REGION` (else
    /// us-east-1), `AWS_ACCESS_KEY_ID` with `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`),
    /// `IMAGEBUILD_STORE_PUBLIC_URL`. Errors in the file are located (`file:line:col: ...`).
    public static func load(store: String, configFile: String?, environment: [String: String]) throws -> StoreSettings {
        let (bucket, prefix) = try parseStoreURL(store)
        var file = FileValues()
        if let configFile { file = try readConfig(configFile) }
        func env(_ names: String...) -> String? {
            names.lazy.compactMap { environment[$0] }.first { !$0.isEmpty }
        }

        let endpointSource: String
        let endpointText: String
        if let value = file.endpoint {
            (endpointText, endpointSource) = (value.text, "\(value.location)")
        } else if let value = env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL") {
            (endpointText, endpointSource) = (value, environment["AWS_ENDPOINT_URL_S3"]?.isEmpty == false ? "AWS_ENDPOINT_URL_S3" : "AWS_ENDPOINT_URL")
        } else {
            throw StoreError(.config, "s3://\(bucket): no endpoint: set endpoint: in --store-config, or AWS_ENDPOINT_URL_S3 (e.g. http://s3.example:8333)")
        }
        let endpoint = try parseBaseURL(endpointText, what: "endpoint", source: endpointSource)
        let region = file.region?.text ?? env("AWS_REGION", "AWS_DEFAULT_REGION") ?? defaultRegion

        let credentials: AWSCredentials
        if file.accessKeyID != nil || file.secret != nil {
            guard let id = file.accessKeyID else {
                throw ConfigError(file.secret!.location, "a secret without access_key_id", hint: "add access_key_id: next to it")
            }
            guard let secret = file.secret else {
                throw ConfigError(id.location, "access_key_id without a secret", hint: "add secret_access_key_file: FILE (mode 0600)")
            }
            credentials = AWSCredentials(accessKeyID: id.text, secretAccessKey: secret.text, sessionToken: file.sessionToken?.text)
        } else if let id = env("AWS_ACCESS_KEY_ID"), let secret = env("AWS_SECRET_ACCESS_KEY") {
            credentials = AWSCredentials(accessKeyID: id, secretAccessKey: secret, sessionToken: env("AWS_SESSION_TOKEN"))
        } else {
            throw StoreError(.config, "s3://\(bucket) at \(endpoint): no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or access_key_id and secret_access_key_file in --store-config")
        }

        var publicURL = endpoint + "/" + bucket
        if let value = file.publicURL {
            publicURL = try parseBaseURL(value.text, what: "public_url", source: "\(value.location)", allowPath: true)
        } else if let value = env("IMAGEBUILD_STORE_PUBLIC_URL") {
            publicURL = try parseBaseURL(value, what: "public_url", source: "IMAGEBUILD_STORE_PUBLIC_URL", allowPath: true)
        }
        guard publicURL.hasPrefix("http://") else {
            let source = file.publicURL.map { "\($0.location)" } ?? (environment["IMAGEBUILD_STORE_PUBLIC_URL"] != nil ? "IMAGEBUILD_STORE_PUBLIC_URL" : endpointSource)
            throw StoreError(.config, "\(source): nodes fetch images over plain http (stage 1 has no TLS; the image's sha256 on the kernel command line protects it): set public_url: http://HOST[:PORT]/\(bucket) in --store-config (or IMAGEBUILD_STORE_PUBLIC_URL)")
        }
        return StoreSettings(bucket: bucket, prefix: prefix, endpoint: endpoint, region: region, credentials: credentials,
                             publicURL: publicURL, partSize: file.partSize ?? defaultPartSize)
    }

    /// `s3://BUCKET[/PREFIX]` -> bucket, prefix. Refuses credentials in it without repeating them.
    static func parseStoreURL(_ text: String) throws -> (bucket: String, prefix: String) {
        guard text.hasPrefix("s3://") else {
            throw StoreError(.config, "--store: expected s3://BUCKET/PREFIX, found '\(text.contains("@") ? "(a URL with credentials)" : text)'")
        }
        let rest = text.dropFirst(5)
        let bucketPart = rest.prefix { $0 != "/" }
        if bucketPart.contains("@") || bucketPart.contains(":") {
            throw StoreError(.config, "--store: the URL holds credentials (user:secret@); it was refused and not used: give them in --store-config or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, never on the command line")
        }
        let bucket = String(bucketPart)
        guard isBucketName(bucket) else {
            throw StoreError(.config, "--store: '\(bucket)' is not a bucket name (3 to 63 lower-case letters, digits, '-' and '.')")
        }
        let segments = rest.dropFirst(bucketPart.count).split(separator: "/").map(String.init)
        for segment in segments where segment == "." || segment == ".." || segment.contains(where: { $0 == "?" || $0 == "#" || $0 == "\\" }) {
            throw StoreError(.config, "--store: the prefix may not hold '\(segment)'")
        }
        return (bucket, segments.joined(separator: "/"))
    }

    static func isBucketName(_ name: String) -> Bool {
        (3...63).contains(name.count) && name.utf8.allSatisfy {
            ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2d || $0 == 0x2e
        } && !name.hasPrefix("-") && !name.hasPrefix(".") && !name.hasSuffix("-") && !name.hasSuffix(".")
    }

    /// `http(s)://host[:port]` (with `allowPath`, a path too), without a trailing `/`. Refuses user info
    /// (credentials in a URL) without repeating it.
    static func parseBaseURL(_ text: String, what: String, source: String, allowPath: Bool = false) throws -> String {
        let trimmed = text.hasSuffix("/") ? String(text.dropLast()) : text
        guard let components = URLComponents(string: trimmed), let scheme = components.scheme?.lowercased(),
              scheme == "http" || scheme == "https", let host = components.host, !host.isEmpty else {
            throw StoreError(.config, "\(source): \(what) must be http://HOST[:PORT] or https://HOST[:PORT]\(text.contains("@") ? "" : ", found '\(text)'")")
        }
        if components.user != nil || components.password != nil || trimmed.contains("@") {
            throw StoreError(.config, "\(source): the \(what) URL holds credentials (user:secret@); it was refused: give them as access_key_id and secret_access_key_file")
        }
        if components.query != nil || components.fragment != nil || (!allowPath && !components.path.isEmpty) {
            throw StoreError(.config, "\(source): \(what) must be http(s)://HOST[:PORT]\(allowPath ? "[/PATH]" : ""), without \(allowPath ? "a query" : "a path or query")")
        }
        return trimmed
    }

    /// What a `--store-config` file sets, each with where.
    struct FileValues {
        struct Located { var text: String; var location: ConfigLocation }
        var endpoint, region, accessKeyID, secret, sessionToken, publicURL: Located?
        var partSize: Int64?
    }

    /// Reads a `--store-config` file: strict (unknown keys are errors, with a "did you mean"), every
    /// error located. A secret may be in the file only when only its owner can read it (0600, as ssh
    /// keys), else in `secret_access_key_file`, which must be 0600 itself.
    static func readConfig(_ path: String) throws -> FileValues {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw StoreError(.config, "--store-config \(path): cannot be read (\(String(cString: strerror(errno))))")
        }
        let map = try YAMLValue.parse(text, file: path).map(allowed: configKeys)
        var values = FileValues()
        func located(_ key: String) throws -> FileValues.Located? {
            guard let value = map[key] else { return nil }
            let string = try value.string().trimmingCharacters(in: .whitespaces)
            guard !string.isEmpty else { throw value.error("\(key) is empty") }
            return FileValues.Located(text: string, location: value.location)
        }
        values.endpoint = try located("endpoint")
        values.region = try located("region")
        values.accessKeyID = try located("access_key_id")
        values.sessionToken = try located("session_token")
        values.publicURL = try located("public_url")
        if let size = try map.int("part_size_mib", in: 5...5120) { values.partSize = Int64(size) << 20 }
        let inline = try located("secret_access_key")
        let secretFile = try located("secret_access_key_file")
        if let inline, secretFile != nil {
            throw ConfigError(inline.location, "both secret_access_key and secret_access_key_file", hint: "keep one")
        }
        if let inline {
            if let problem = secretFileProblem(path, what: "store config") {
                throw ConfigError(inline.location, "secret_access_key in a file others can read: \(problem)", hint: "chmod 600 \(path), or use secret_access_key_file")
            }
            values.secret = inline
        }
        if let secretFile {
            let file = secretFile.text.hasPrefix("/") ? secretFile.text
                : URL(fileURLWithPath: path).deletingLastPathComponent().appendingPathComponent(secretFile.text).path
            if let problem = secretFileProblem(file, what: "secret_access_key_file") { throw ConfigError(secretFile.location, problem) }
            guard let data = FileManager.default.contents(atPath: file) else {
                throw ConfigError(secretFile.location, "secret_access_key_file \(file) cannot be read")
            }
            let secret = String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).first
                .map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
            guard !secret.isEmpty else { throw ConfigError(secretFile.location, "secret_access_key_file \(file) is empty") }
            values.secret = FileValues.Located(text: secret, location: secretFile.location)
        }
        return values
    }

    /// Why `path` may not hold a secret, or nil: a regular file only its owner can read or write.
    static func secretFileProblem(_ path: String, what: String) -> String? {
        var info = stat()
        guard stat(path, &info) == 0 else { return "\(what) \(path): \(String(cString: strerror(errno)))" }
        guard info.st_mode & S_IFMT == S_IFREG else { return "\(what) \(path) is not a regular file" }
        let mode = info.st_mode & 0o777
        guard mode & 0o077 == 0 else { return "\(what) \(path) has mode \(String(format: "%04o", mode)): others can read it (chmod 600 \(path))" }
        return nil
    }
}
