import Crypto
import Foundation

/// The host key types every node gets: the three sshd loads by default when sshd_config names no
/// HostKey, so a stock sshd on the node uses them without configuration.
public enum HostKeyType: String, CaseIterable, Sendable, Encodable {
    case ed25519, ecdsa, rsa

    /// The algorithm name that starts the public key line and a known_hosts entry.
    public var algorithm: String {
        switch self {
        case .ed25519: "ssh-ed25519"
        case .ecdsa: "ecdsa-sha2-nistp256"
        case .rsa: "ssh-rsa"
        }
    }

    /// sshd's default file name, under `etc/ssh/` on the node and in the store.
    public var fileName: String { "ssh_host_\(rawValue)_key" }

    /// Sizes given explicitly (OpenSSH's defaults today), so another ssh-keygen version makes the same kind of key.
    var keygenArguments: [String] {
        switch self {
        case .ed25519: ["-t", "ed25519"]
        case .ecdsa: ["-t", "ecdsa", "-b", "256"]
        case .rsa: ["-t", "rsa", "-b", "3072"]
        }
    }
}

/// Bytes that must not reach a log: printing, dumping or reflecting shows only their length, and
/// there is deliberately no Codable conformance to leak them through.
public struct SecretBytes: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    public let bytes: [UInt8]
    public init(_ bytes: [UInt8]) { self.bytes = bytes }
    public var count: Int { bytes.count }
    public var description: String { "<secret, \(bytes.count) bytes>" }
    public var debugDescription: String { description }
    public var customMirror: Mirror { Mirror(self, children: [], displayStyle: .struct) }
}

/// A host-key file the boot server places on a node (key, public key, certificate, sshd drop-in), by its path under the node's root.
public struct HostKeyFile: Sendable, Equatable, CustomStringConvertible, Encodable {
    public enum Contents: Sendable, Equatable {
        case plain([UInt8])
        case secret(SecretBytes)
    }

    /// Relative to the node's root, e.g. `etc/ssh/ssh_host_ed25519_key`.
    public var path: String
    public var mode: UInt32
    /// Owner and group on the node (`root`: sshd runs as root and refuses host keys others own).
    public var owner: String
    public var contents: Contents

    public init(path: String, mode: UInt32, owner: String = "root", contents: Contents) {
        self.path = path
        self.mode = mode
        self.owner = owner
        self.contents = contents
    }

    public var bytes: [UInt8] {
        switch contents {
        case .plain(let bytes): bytes
        case .secret(let secret): secret.bytes
        }
    }

    public var isSecret: Bool { if case .secret = contents { true } else { false } }

    /// Never the contents, secret or not: a file list is what gets logged.
    public var description: String {
        "\(path) \(String(mode, radix: 8).leftPadded(to: 4)) \(owner):\(owner) (\(bytes.count) bytes\(isSecret ? ", secret" : ""))"
    }

    private enum CodingKeys: String, CodingKey { case path, mode, owner, secret, size, text }

    /// The text of public files only.
    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(path, forKey: .path)
        try container.encode(String(mode, radix: 8).leftPadded(to: 4), forKey: .mode)
        try container.encode(owner, forKey: .owner)
        try container.encode(isSecret, forKey: .secret)
        try container.encode(bytes.count, forKey: .size)
        if case .plain(let bytes) = contents, let text = String(validating: bytes, as: UTF8.self) {
            try container.encode(text, forKey: .text)
        }
    }
}

/// One host key of a node: the private key (a secret), its public line and fingerprint.
public struct HostKey: Sendable, Equatable, CustomStringConvertible, Encodable {
    public var type: HostKeyType
    public var privateKey: SecretBytes
    /// The `.pub` line: `ssh-ed25519 AAAA... node001`.
    public var publicKey: String
    /// As `ssh-keygen -lf` prints it: `SHA256:` and the unpadded base64 of the key blob's SHA-256.
    public var fingerprint: String

    public var algorithm: String { type.algorithm }
    /// The key blob in base64: the second field of the public line, what known_hosts lists.
    public var publicKeyBase64: String { String(publicKey.split(separator: " ")[1]) }

    /// What the node needs: the private key 0600 and the public key 0644, both root's.
    public var files: [HostKeyFile] {
        [HostKeyFile(path: "etc/ssh/" + type.fileName, mode: 0o600, contents: .secret(privateKey)),
         HostKeyFile(path: "etc/ssh/" + type.fileName + ".pub", mode: 0o644, contents: .plain(Array((publicKey + "\n").utf8)))]
    }

    public var description: String { "\(algorithm) \(fingerprint)" }

    private enum CodingKeys: String, CodingKey { case type, publicKey, fingerprint }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(algorithm, forKey: .type)
        try container.encode(publicKey, forKey: .publicKey)
        try container.encode(fingerprint, forKey: .fingerprint)
    }

    /// The SHA-256 fingerprint of a public key line, or nil when the line is not `TYPE BASE64 [comment]`
    /// with a blob that names TYPE (computed here, not by ssh-keygen: the server asks for it per boot).
    public static func fingerprint(ofPublicKey line: String) -> String? {
        let fields = line.split(separator: " ", omittingEmptySubsequences: true)
        guard fields.count >= 2, let blob = Data(base64Encoded: String(fields[1])), blob.count > 4 else { return nil }
        // The blob starts with its own type as an SSH string (a 4-byte big-endian length, then the name).
        let length = blob.prefix(4).reduce(0) { $0 << 8 | Int($1) }
        guard blob.count >= 4 + length, String(decoding: blob.dropFirst(4).prefix(length), as: UTF8.self) == fields[0] else { return nil }
        return "SHA256:" + Data(SHA256.hash(data: blob)).base64EncodedString().trimmingCharacters(in: CharacterSet(charactersIn: "="))
    }
}

/// The host keys of one node, one of each `HostKeyType`.
public struct HostKeySet: Sendable, Equatable, CustomStringConvertible, Encodable {
    /// Lower case: the directory the keys live in.
    public var hostname: String
    public var keys: [HostKey]

    public func key(_ type: HostKeyType) -> HostKey? { keys.first { $0.type == type } }

    /// Every file the node needs for its keys (certificates come from `HostKeyStore.certify`).
    public var files: [HostKeyFile] { keys.flatMap(\.files) }

    public var description: String { "host keys of \(hostname): " + keys.map(\.description).joined(separator: ", ") }
}

public enum HostKeyError: Error, CustomStringConvertible, Equatable {
    case hostname(String)
    case unsafeFile(path: String, reason: String)
    case malformed(path: String, reason: String)
    case system(operation: String, path: String, errno: Int32)
    case principal(String)
    case changed(hostname: String)

    public var description: String {
        switch self {
        case .hostname(let name):
            "host keys: '\(name)' is not a hostname (letters, digits and '-', at most 63, not starting with '-')"
        case .unsafeFile(let path, let reason):
            "refusing the host key \(path): \(reason)"
        case .malformed(let path, let reason):
            "host key \(path) is malformed: \(reason) (delete its directory to generate new keys)"
        case .system(let operation, let path, let code):
            "host keys: cannot \(operation) \(path): \(String(cString: strerror(code)))"
        case .principal(let text):
            "'\(text)' is not a certificate principal (a hostname, domain name or IP address)"
        case .changed(let hostname):
            "the host keys of \(hostname) changed since they were read (rotated?): read them again"
        }
    }
}

/// The server's store of node host keys: generated once per hostname, kept under `directory`
/// (`<state_dir>/host-keys`) and handed to the node at every boot, so a node that boots from RAM keeps
/// its identity and users' known_hosts stay valid. Keyed by hostname, not MAC, so a node whose NIC is
/// replaced keeps its keys.
///
///     host-keys/                          0700
///       node001/                          0700, appears whole (renamed into place)
///         ssh_host_ed25519_key            0600   and .pub, -cert.pub
///         ssh_host_ecdsa_key, ssh_host_rsa_key
///         certificates.json               what the certificates were signed with
///       .node002.tmp-<pid>-XXXXXX/        a generation in progress (or abandoned by a crash)
///
/// Run as root against a store another user owns (the server's), new files are given to that user,
/// so `sudo imagebuild nodes known-hosts` does not make keys the server cannot read.
public struct HostKeyStore: Sendable {
    public let directory: String

    /// How much `nice` makes key generation (ssh-keygen) yield to other work: the server makes keys
    /// ahead at 19, so a boot storm it serves meanwhile does not wait; 0 when a node waits for them.
    public var niceness = 0

    public init(directory: String) { self.directory = directory }

    /// Where the server keeps host keys in its state directory.
    public static func directory(inStateDirectory state: String) -> String { state + "/host-keys" }

    /// The directory name for a hostname: lower case (DNS names are case-insensitive, so a node
    /// renamed `Node001` keeps its keys). Anything but a plain DNS label is refused, so a name can
    /// never reach outside the store.
    public static func checkHostname(_ hostname: String) throws -> String {
        let ascii = hostname.utf8
        guard (1...63).contains(ascii.count), ascii.first != UInt8(ascii: "-"),
              ascii.allSatisfy({ (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0 | 0x20) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || $0 == UInt8(ascii: "-") })
        else { throw HostKeyError.hostname(hostname) }
        return hostname.lowercased()
    }

    /// The stored keys of `hostname`, generating the types it lacks first (once: concurrent callers,
    /// in this process or another, all end with the one set that was stored).
    public func keys(for hostname: String) throws -> HostKeySet {
        try obtain(hostname).set
    }

    /// The set, and whether this call stored keys (false when they existed or another caller's won).
    func obtain(_ hostname: String) throws -> (set: HostKeySet, generated: Bool) {
        let name = try Self.checkHostname(hostname)
        let owner = try prepare()
        let hostDirectory = directory + "/" + name
        var generated = false
        // A lost race or a repair leaves the loop at its next look; three looks cover every order.
        for _ in 0..<3 {
            if isComplete(hostDirectory) { return (try read(name, owner: owner), generated) }
            let missing = HostKeyType.allCases.filter { !exists(hostDirectory + "/" + $0.fileName) }
            if missing.count == HostKeyType.allCases.count && !exists(hostDirectory) {
                generated = try generateWhole(name, owner: owner) || generated
            } else {
                generated = try repair(name, owner: owner) || generated
            }
        }
        return (try read(name, owner: owner), generated)
    }

    /// Whether every key of `hostname` is stored with its public half: `keys(for:)` then only reads.
    public func hasKeys(for hostname: String) -> Bool {
        guard let name = try? Self.checkHostname(hostname) else { return false }
        return isComplete(directory + "/" + name)
    }

    /// Every key type's private and public file is there.
    private func isComplete(_ hostDirectory: String) -> Bool {
        HostKeyType.allCases.allSatisfy { exists(hostDirectory + "/" + $0.fileName) && exists(hostDirectory + "/" + $0.fileName + ".pub") }
    }

    /// Who the store's files must belong to: the current user; for root, the store directory's owner
    /// (a server running as its own user owns the store, and root may read and fill it for it).
    struct Owner: Sendable {
        var uid: uid_t
        var gid: gid_t
        /// Files this process creates are given to `uid` (only root may, and only root needs to).
        var chownNewFiles: Bool
    }

    /// Creates the store directory (0700) and returns who owns what is in it.
    func prepare() throws -> Owner {
        if !exists(directory) {
            let parent = (directory as NSString).deletingLastPathComponent
            try? FileManager.default.createDirectory(atPath: parent.isEmpty ? "." : parent, withIntermediateDirectories: true)
            if mkdir(directory, 0o700) != 0 && errno != EEXIST {
                throw HostKeyError.system(operation: "create", path: directory, errno: errno)
            }
            // Made by root in a state directory that belongs to the server: hand it over.
            var parentInfo = stat()
            if geteuid() == 0, stat(parent.isEmpty ? "." : parent, &parentInfo) == 0, parentInfo.st_uid != 0 {
                _ = chown(directory, parentInfo.st_uid, parentInfo.st_gid)
            }
        }
        var info = stat()
        guard stat(directory, &info) == 0 else { throw HostKeyError.system(operation: "open", path: directory, errno: errno) }
        if geteuid() == 0 { return Owner(uid: info.st_uid, gid: info.st_gid, chownNewFiles: info.st_uid != 0) }
        return Owner(uid: geteuid(), gid: getegid(), chownNewFiles: false)
    }

    /// The first set of a host: all types made in a private directory next to the target, then renamed
    /// into place in one step. A crash leaves only the temporary directory; when another caller's
    /// rename came first, ours fails and is discarded, and the caller reads theirs.
    private func generateWhole(_ name: String, owner: Owner) throws -> Bool {
        let staging = try makeStaging(in: directory, prefix: ".\(name).tmp-\(getpid())-", owner: owner)
        defer { try? FileManager.default.removeItem(atPath: staging) }
        try generateKeys(HostKeyType.allCases, name: name, into: staging, owner: owner)
        SafeFileSystem.fsyncDirectory(staging)
        if rename(staging, directory + "/" + name) == 0 {
            SafeFileSystem.fsyncDirectory(directory)
            return true
        }
        guard errno == EEXIST || errno == ENOTEMPTY else {
            throw HostKeyError.system(operation: "rename into", path: directory + "/" + name, errno: errno)
        }
        return false
    }

    /// A host directory that lacks some keys (one was deleted; or a crash came during an earlier
    /// repair): under the directory's lock, each missing type is generated aside and moved in public
    /// key first, private key last, so a private key in place always has its own public key next to it.
    /// A private key without its public key gets it back from `ssh-keygen -y`.
    private func repair(_ name: String, owner: Owner) throws -> Bool {
        let hostDirectory = directory + "/" + name
        let lock = try DirectoryLock(hostDirectory)
        defer { lock.release() }
        let missing = HostKeyType.allCases.filter { !exists(hostDirectory + "/" + $0.fileName) }
        let unpaired = HostKeyType.allCases.filter { !missing.contains($0) && !exists(hostDirectory + "/" + $0.fileName + ".pub") }
        // Another caller repaired it while this one waited for the lock.
        if missing.isEmpty && unpaired.isEmpty { return false }
        let staging = try makeStaging(in: directory, prefix: ".\(name).tmp-\(getpid())-", owner: owner)
        defer { try? FileManager.default.removeItem(atPath: staging) }
        try generateKeys(missing, name: name, into: staging, owner: owner)
        for type in missing {
            for suffix in [".pub", ""] {
                guard rename(staging + "/" + type.fileName + suffix, hostDirectory + "/" + type.fileName + suffix) == 0 else {
                    throw HostKeyError.system(operation: "rename into", path: hostDirectory + "/" + type.fileName + suffix, errno: errno)
                }
            }
        }
        for type in unpaired {
            let key = hostDirectory + "/" + type.fileName
            _ = try readPrivateKey(key, owner: owner)
            let line = try Tool.run(["ssh-keygen", "-y", "-f", key]).trimmingCharacters(in: .whitespacesAndNewlines)
            try writeAtomically(Array((line + "\n").utf8), to: key + ".pub", mode: 0o644, staging: staging, owner: owner)
        }
        SafeFileSystem.fsyncDirectory(hostDirectory)
        return !missing.isEmpty
    }

    private func generateKeys(_ types: [HostKeyType], name: String, into staging: String, owner: Owner) throws {
        for type in types {
            let path = staging + "/" + type.fileName
            try Tool.run((niceness > 0 ? ["nice", "-n", "\(niceness)"] : []) + ["ssh-keygen", "-q"] + type.keygenArguments + ["-N", "", "-C", name, "-f", path])
            for file in [path, path + ".pub"] {
                if owner.chownNewFiles { _ = chown(file, owner.uid, owner.gid) }
                try syncFile(file)
            }
        }
    }

    private func read(_ name: String, owner: Owner) throws -> HostKeySet {
        let hostDirectory = directory + "/" + name
        var keys: [HostKey] = []
        for type in HostKeyType.allCases {
            let path = hostDirectory + "/" + type.fileName
            let secret = try readPrivateKey(path, owner: owner)
            let line = String(decoding: try readFile(path + ".pub"), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard line.hasPrefix(type.algorithm + " "), let fingerprint = HostKey.fingerprint(ofPublicKey: line) else {
                throw HostKeyError.malformed(path: path + ".pub", reason: "not an \(type.algorithm) public key")
            }
            keys.append(HostKey(type: type, privateKey: secret, publicKey: line, fingerprint: fingerprint))
        }
        return HostKeySet(hostname: name, keys: keys)
    }

    /// A private key is used only when it is a regular file (not a link) of the store's owner that
    /// nobody else may read: a key others could have read or replaced is not this node's identity.
    func readPrivateKey(_ path: String, owner: Owner) throws -> SecretBytes {
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        if fd < 0 {
            if errno == ELOOP { throw HostKeyError.unsafeFile(path: path, reason: "it is a symbolic link") }
            throw HostKeyError.system(operation: "open", path: path, errno: errno)
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw HostKeyError.system(operation: "stat", path: path, errno: errno) }
        guard info.st_mode & S_IFMT == S_IFREG else { throw HostKeyError.unsafeFile(path: path, reason: "it is not a regular file") }
        guard info.st_uid == owner.uid else {
            throw HostKeyError.unsafeFile(path: path, reason: "it is owned by uid \(info.st_uid), not \(owner.uid) (the store's owner)")
        }
        guard info.st_mode & 0o077 == 0 else {
            throw HostKeyError.unsafeFile(path: path, reason: "group or others may access it (mode \(String(info.st_mode & 0o7777, radix: 8).leftPadded(to: 4))); "
                                          + "if nobody else read it, chmod 600 it, else delete its directory to generate new keys")
        }
        return SecretBytes(try readAll(fd, path: path))
    }

    // MARK: - Many hosts

    /// Generates the sets `hostnames` lack, `concurrency` at a time, and returns how many hosts got
    /// keys. Meant to run before nodes boot: an RSA 3072 key takes a fraction of a second, which a
    /// boot storm of thousands of new nodes must not wait for. Every hostname is checked before any
    /// key is made; the first failure stops the rest. Blocks the calling thread.
    public func ensureKeys(for hostnames: [String], concurrency: Int) throws -> Int {
        var seen = Set<String>()
        let names = try hostnames.map(Self.checkHostname).filter { seen.insert($0).inserted }
        _ = try prepare()
        removeAbandonedStaging()
        let queue = WorkQueue(names)
        let group = DispatchGroup()
        for _ in 0..<max(1, min(concurrency, names.count)) {
            group.enter()
            Thread {
                defer { group.leave() }
                while let name = queue.next() {
                    do {
                        if try obtain(name).generated { queue.countGenerated() }
                    } catch {
                        queue.fail(error)
                    }
                }
            }.start()
        }
        group.wait()
        return try queue.result()
    }

    /// `ensureKeys` on threads of its own, so an async caller (the server) does not hold one of the
    /// few threads Swift's concurrency runs on while ssh-keygen works.
    public func ensureKeys(for hostnames: [String], concurrency: Int) async throws -> Int {
        try await withCheckedThrowingContinuation { continuation in
            Thread { continuation.resume(with: Result { try self.ensureKeys(for: hostnames, concurrency: concurrency) }) }.start()
        }
    }

    /// Removes the temporary directories of generations whose process is gone (a crash or a kill);
    /// those of live processes stay. Returns how many were removed.
    @discardableResult
    public func removeAbandonedStaging() -> Int {
        var removed = 0
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where entry.hasPrefix(".") {
            guard let pid = Self.stagingProcess(entry), kill(pid, 0) != 0, errno == ESRCH else { continue }
            if (try? FileManager.default.removeItem(atPath: directory + "/" + entry)) != nil { removed += 1 }
        }
        return removed
    }

    /// The process id in a staging name `.NAME.tmp-PID-XXXXXX` (or `.certify.tmp-PID-XXXXXX`).
    static func stagingProcess(_ entry: String) -> pid_t? {
        guard let range = entry.range(of: ".tmp-", options: .backwards) else { return nil }
        return entry[range.upperBound...].split(separator: "-").first.flatMap { pid_t($0) }
    }

    // MARK: - Certificates

    /// Certificates never expire (`-V always:forever`): a node gets new files only when it boots, so
    /// one that stays up longer than an expiring certificate would turn every user away on a day when
    /// nothing changed; the key they sign is kept for the node's lifetime anyway. A key that must no
    /// longer be trusted is revoked (`@revoked` in ssh_known_hosts, or a KRL in `RevokedHostKeys`).
    public static let certificateValidity = "always:forever"

    /// The sshd_config drop-in that makes sshd offer the certificates.
    public static let certificateConfigPath = "etc/ssh/sshd_config.d/imagebuild-host-certificates.conf"

    /// What the stored certificates were signed with, so a changed CA, principal list or key re-signs.
    struct CertificateRecord: Codable, Equatable {
        var ca: String
        var principals: [String]
        var validity: String
        var keys: [String]
    }

    /// Host certificates for `set`, signed by the CA whose private key is at `ca`, for `principals`
    /// (the names users type: `KnownHosts.names`), plus the sshd_config drop-in that offers them. They
    /// are kept next to the keys and signed again only when the CA, the principals or the keys change.
    /// The CA key must not have a passphrase (ssh-keygen runs without a terminal).
    public func certify(_ set: HostKeySet, principals: [String], ca: String) throws -> [HostKeyFile] {
        guard !principals.isEmpty else { throw HostKeyError.principal("") }
        for principal in principals where principal.isEmpty || principal.utf8.count > 253
            || !principal.unicodeScalars.allSatisfy({ $0.isASCII && (CharacterSet.alphanumerics.contains($0) || ".-:".unicodeScalars.contains($0)) }) {
            throw HostKeyError.principal(principal)
        }
        let name = try Self.checkHostname(set.hostname)
        let owner = try prepare()
        let hostDirectory = directory + "/" + name
        let caLine = try Tool.run(["ssh-keygen", "-y", "-f", ca]).trimmingCharacters(in: .whitespacesAndNewlines)
        guard let caFingerprint = HostKey.fingerprint(ofPublicKey: caLine) else {
            throw HostKeyError.malformed(path: ca, reason: "ssh-keygen -y did not print a public key")
        }
        let wanted = CertificateRecord(ca: caFingerprint, principals: principals, validity: Self.certificateValidity,
                                       keys: set.keys.map(\.fingerprint))
        let lock = try DirectoryLock(hostDirectory)
        defer { lock.release() }
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: hostDirectory)) ?? [] where entry.hasPrefix(".certify.tmp-") {
            if let pid = Self.stagingProcess(entry), kill(pid, 0) != 0, errno == ESRCH { try? FileManager.default.removeItem(atPath: hostDirectory + "/" + entry) }
        }
        // Certify only what the store holds: a set read before a rotation is refused.
        guard try read(name, owner: owner).keys.map(\.fingerprint) == wanted.keys else { throw HostKeyError.changed(hostname: name) }
        let recordPath = hostDirectory + "/certificates.json"
        let stored = (try? readFile(recordPath)).flatMap { try? JSONDecoder().decode(CertificateRecord.self, from: Data($0)) }
        let certificates = set.keys.map { hostDirectory + "/" + $0.type.fileName + "-cert.pub" }
        if stored != wanted || !certificates.allSatisfy(exists) {
            let staging = try makeStaging(in: hostDirectory, prefix: ".certify.tmp-\(getpid())-", owner: owner)
            defer { try? FileManager.default.removeItem(atPath: staging) }
            for key in set.keys {
                let pub = staging + "/" + key.type.fileName + ".pub"
                try Data((key.publicKey + "\n").utf8).write(to: URL(fileURLWithPath: pub))
                try Tool.run(["ssh-keygen", "-q", "-s", ca, "-I", name, "-h", "-n", principals.joined(separator: ","),
                              "-V", Self.certificateValidity, pub])
                let certificate = staging + "/" + key.type.fileName + "-cert.pub"
                if owner.chownNewFiles { _ = chown(certificate, owner.uid, owner.gid) }
                try syncFile(certificate)
            }
            for key in set.keys {
                let file = key.type.fileName + "-cert.pub"
                guard rename(staging + "/" + file, hostDirectory + "/" + file) == 0 else {
                    throw HostKeyError.system(operation: "rename into", path: hostDirectory + "/" + file, errno: errno)
                }
            }
            // The record last: a crash before it leaves a record that no longer matches, so the next call signs again.
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            try writeAtomically(Array(try encoder.encode(wanted)) + [0x0a], to: recordPath, mode: 0o644, staging: staging, owner: owner)
            SafeFileSystem.fsyncDirectory(hostDirectory)
        }
        var files = try set.keys.map { key in
            HostKeyFile(path: "etc/ssh/" + key.type.fileName + "-cert.pub", mode: 0o644,
                     contents: .plain(try readFile(hostDirectory + "/" + key.type.fileName + "-cert.pub")))
        }
        let config = "# imagebuild: this node's host certificates, signed by the site's host CA (\(caFingerprint)).\n"
            + set.keys.map { "HostCertificate /etc/ssh/\($0.type.fileName)-cert.pub\n" }.joined()
        files.append(HostKeyFile(path: Self.certificateConfigPath, mode: 0o644, contents: .plain(Array(config.utf8))))
        return files
    }

    // MARK: - Files

    private func exists(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0
    }

    private func makeStaging(in parent: String, prefix: String, owner: Owner) throws -> String {
        var template = Array((parent + "/" + prefix + "XXXXXX").utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw HostKeyError.system(operation: "create a directory in", path: parent, errno: errno)
        }
        let path = String(cString: made)
        if owner.chownNewFiles { _ = chown(path, owner.uid, owner.gid) }
        return path
    }

    private func writeAtomically(_ bytes: [UInt8], to path: String, mode: mode_t, staging: String, owner: Owner) throws {
        let temporary = staging + "/" + (path as NSString).lastPathComponent
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        guard fd >= 0 else { throw HostKeyError.system(operation: "create", path: temporary, errno: errno) }
        defer { close(fd) }
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count, fsync(fd) == 0 else { throw HostKeyError.system(operation: "write", path: temporary, errno: errno) }
        if owner.chownNewFiles { _ = fchown(fd, owner.uid, owner.gid) }
        guard rename(temporary, path) == 0 else { throw HostKeyError.system(operation: "rename into", path: path, errno: errno) }
    }

    private func readFile(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw HostKeyError.system(operation: "open", path: path, errno: errno) }
        defer { close(fd) }
        return try readAll(fd, path: path)
    }

    private func readAll(_ fd: Int32, path: String) throws -> [UInt8] {
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16_384)
        while true {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count < 0 { if errno == EINTR { continue }; throw HostKeyError.system(operation: "read", path: path, errno: errno) }
            if count == 0 { return result }
            result += buffer[..<count]
        }
    }

    private func syncFile(_ path: String) throws { try SafeFileSystem.fsyncFile(path) }
}

/// flock on a host's directory: repairs and certificate signing of one host, one at a time, across
/// processes.
private final class DirectoryLock {
    let fd: Int32
    init(_ path: String) throws {
        fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw HostKeyError.system(operation: "open", path: path, errno: errno) }
        while flock(fd, LOCK_EX) != 0 {
            guard errno == EINTR else {
                let code = errno
                close(fd)
                throw HostKeyError.system(operation: "lock", path: path, errno: code)
            }
        }
    }
    func release() { flock(fd, LOCK_UN); close(fd) }
}

/// The hostnames `ensureKeys` workers take one at a time, with the count and the first error.
private final class WorkQueue: @unchecked Sendable {
    private let lock = NSLock()
    private let names: [String]
    private var index = 0
    private var generated = 0
    private var error: Error?

    init(_ names: [String]) { self.names = names }

    func next() -> String? {
        lock.withLock {
            guard error == nil, index < names.count else { return nil }
            defer { index += 1 }
            return names[index]
        }
    }
    func countGenerated() { lock.withLock { generated += 1 } }
    func fail(_ error: Error) { lock.withLock { if self.error == nil { self.error = error } } }
    func result() throws -> Int {
        try lock.withLock {
            if let error { throw error }
            return generated
        }
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
