import Foundation
import Testing
@testable import ImageBuildKit

/// The node host key store against the real ssh-keygen: keys made once and kept, races between
/// callers, crashes, refused names and files, fingerprints, certificates, and secrets kept out of text.
@Suite("Host key store")
struct HostKeyStoreTests {
    let temporary = TemporaryDirectory("hostkeys")
    var store: HostKeyStore { HostKeyStore(directory: temporary.path + "/state/host-keys") }

    @Test("a set is generated once, with private modes, and read back without touching a file")
    func generatedOnceAndReused() throws {
        let (first, generated) = try store.obtain("Node001")
        #expect(generated)
        #expect(first.hostname == "node001", "keys are kept under the lower-case name")
        #expect(first.keys.map(\.algorithm) == ["ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"])
        let dir = store.directory + "/node001"
        #expect(mode(store.directory) == 0o700)
        #expect(mode(dir) == 0o700)
        for type in HostKeyType.allCases {
            #expect(mode(dir + "/" + type.fileName) == 0o600, "\(type)")
            #expect(mode(dir + "/" + type.fileName + ".pub") == 0o644, "\(type)")
            #expect(try first.key(type)!.privateKey.bytes == Array(Data(contentsOf: URL(fileURLWithPath: dir + "/" + type.fileName))))
            #expect(first.key(type)!.publicKey.hasSuffix(" node001"), "the comment names the host")
        }
        #expect(try sh("ssh-keygen -lf \(dir)/ssh_host_rsa_key.pub").hasPrefix("3072 "))
        #expect(try sh("ssh-keygen -lf \(dir)/ssh_host_ecdsa_key.pub").hasPrefix("256 "))
        #expect(first.files.map(\.path) == HostKeyType.allCases.flatMap { ["etc/ssh/\($0.fileName)", "etc/ssh/\($0.fileName).pub"] })
        #expect(first.files.map(\.mode) == [0o600, 0o644, 0o600, 0o644, 0o600, 0o644])
        #expect(first.files.map(\.isSecret) == [true, false, true, false, true, false])

        let before = try identities(dir)
        let (second, generatedAgain) = try HostKeyStore(directory: store.directory).obtain("node001")
        #expect(!generatedAgain)
        #expect(second == first)
        #expect(try identities(dir) == before, "reading the set changed a file")
    }

    @Test("eight callers racing on one new host all get the one set that was stored")
    func concurrentCallers() throws {
        let store = store
        let results = Locked<[Result<(set: HostKeySet, generated: Bool), Error>]>([])
        let start = DispatchSemaphore(value: 0)
        let done = DispatchGroup()
        for _ in 0..<8 {
            done.enter()
            Thread {
                start.wait()
                results.append(Result { try store.obtain("node007") })
                done.leave()
            }.start()
        }
        for _ in 0..<8 { start.signal() }
        done.wait()
        let sets = try results.value.map { try $0.get() }
        #expect(sets.count == 8)
        #expect(sets.filter(\.1).count == 1, "exactly one caller's set is stored")
        #expect(Set(sets.map { $0.0.keys.map(\.fingerprint) }).count == 1)
        #expect(sets[0].0 == (try store.keys(for: "node007")))
        #expect(try FileManager.default.contentsOfDirectory(atPath: store.directory) == ["node007"], "a loser left its directory behind")
    }

    @Test("a crashed generation's directory is ignored, then removed; a half-repaired set keeps what it has")
    func crashLeftovers() throws {
        try FileManager.default.createDirectory(atPath: store.directory, withIntermediateDirectories: true)
        // A generation killed after one key: pid 2147483646 cannot exist (pid_max is at most 2^22).
        let abandoned = store.directory + "/.node002.tmp-2147483646-AbCdEf"
        let live = store.directory + "/.node003.tmp-\(getpid())-XyZ123"
        try FileManager.default.createDirectory(atPath: abandoned, withIntermediateDirectories: false)
        try FileManager.default.createDirectory(atPath: live, withIntermediateDirectories: false)
        try sh("ssh-keygen -q -t ed25519 -N '' -C node002 -f \(abandoned)/ssh_host_ed25519_key")
        let half = try String(contentsOfFile: abandoned + "/ssh_host_ed25519_key.pub", encoding: .utf8)

        let set = try store.keys(for: "node002")
        #expect(set.key(.ed25519)?.fingerprint != HostKey.fingerprint(ofPublicKey: half), "the half-made set was used")
        #expect(FileManager.default.fileExists(atPath: abandoned))
        #expect(try store.ensureKeys(for: ["node002"], concurrency: 1) == 0)
        #expect(!FileManager.default.fileExists(atPath: abandoned), "the dead process's directory stayed")
        #expect(FileManager.default.fileExists(atPath: live), "a live process's directory was removed")

        // A host directory with an ed25519 key and an RSA key whose .pub is gone.
        let dir = store.directory + "/node004"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
        try sh("ssh-keygen -q -t ed25519 -N '' -C node004 -f \(dir)/ssh_host_ed25519_key && ssh-keygen -q -t rsa -b 3072 -N '' -C node004 -f \(dir)/ssh_host_rsa_key")
        let ed25519 = try String(contentsOfFile: dir + "/ssh_host_ed25519_key.pub", encoding: .utf8)
        let rsa = try String(contentsOfFile: dir + "/ssh_host_rsa_key.pub", encoding: .utf8)
        try FileManager.default.removeItem(atPath: dir + "/ssh_host_rsa_key.pub")
        let (repaired, generated) = try store.obtain("node004")
        #expect(generated, "the ECDSA key was missing")
        #expect(repaired.key(.ed25519)?.fingerprint == HostKey.fingerprint(ofPublicKey: ed25519))
        #expect(repaired.key(.rsa)?.fingerprint == HostKey.fingerprint(ofPublicKey: rsa), "the RSA public key was not derived from its private key")
        #expect(mode(dir + "/ssh_host_ecdsa_key") == 0o600)
        #expect(try store.obtain("node004").generated == false)
        #expect(try FileManager.default.contentsOfDirectory(atPath: store.directory).sorted() == [".node003.tmp-\(getpid())-XyZ123", "node002", "node004"])
    }

    @Test("a name that is not a plain DNS label is refused before anything is written",
          arguments: ["", "../etc", "a/b", ".hidden", "node 1", "-n", String(repeating: "a", count: 64), "nodé", "node.example", "node_1"])
    func badHostnames(_ name: String) throws {
        #expect(throws: HostKeyError.hostname(name)) { try store.keys(for: name) }
        #expect(throws: HostKeyError.hostname(name)) { try store.ensureKeys(for: ["node001", name], concurrency: 1) }
        #expect(!FileManager.default.fileExists(atPath: store.directory + "/node001"), "ensureKeys made keys before checking every name")
        #expect(try HostKeyStore.checkHostname(String(repeating: "A", count: 63)) == String(repeating: "a", count: 63))
        #expect(try HostKeyStore.checkHostname("0-rack1-n2") == "0-rack1-n2")
    }

    @Test("a private key others may read, own or reach through a link is refused, by name, and not replaced")
    func unsafePrivateKeys() throws {
        _ = try store.keys(for: "node001")
        let key = store.directory + "/node001/ssh_host_rsa_key"
        let bytes = try Data(contentsOf: URL(fileURLWithPath: key))
        for bad: mode_t in [0o644, 0o640, 0o604] {
            chmod(key, bad)
            let error = try #require(throws: HostKeyError.self) { try store.keys(for: "node001") }
            #expect("\(error)".contains(key), "\(error)")
            #expect("\(error)".contains("mode 0\(String(bad, radix: 8))"), "\(error)")
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: key)) == bytes, "a refused key was replaced")
        chmod(key, 0o600)
        _ = try store.keys(for: "node001")
        if geteuid() == 0 {
            chown(key, 65534, 65534)
            let error = try #require(throws: HostKeyError.self) { try store.keys(for: "node001") }
            #expect("\(error)".contains("\(key): it is owned by uid 65534"), "\(error)")
            chown(key, 0, 0)
        }
        let ed25519 = store.directory + "/node001/ssh_host_ed25519_key"
        try FileManager.default.moveItem(atPath: ed25519, toPath: temporary.path + "/elsewhere")
        try FileManager.default.createSymbolicLink(atPath: ed25519, withDestinationPath: temporary.path + "/elsewhere")
        #expect(throws: HostKeyError.unsafeFile(path: ed25519, reason: "it is a symbolic link")) { try store.keys(for: "node001") }
    }

    @Test("fingerprints are what ssh-keygen -lf prints; a line whose blob names another type has none")
    func fingerprints() throws {
        let set = try store.keys(for: "node001")
        for key in set.keys {
            let file = store.directory + "/node001/" + key.type.fileName + ".pub"
            let printed = try sh("ssh-keygen -lf \(file)").split(separator: " ")
            #expect(String(printed[1]) == key.fingerprint, "\(key.type)")
        }
        let ed25519 = set.key(.ed25519)!.publicKeyBase64
        #expect(HostKey.fingerprint(ofPublicKey: "ssh-rsa \(ed25519)") == nil)
        #expect(HostKey.fingerprint(ofPublicKey: "ssh-ed25519 not-base64!") == nil)
        #expect(HostKey.fingerprint(ofPublicKey: "ssh-ed25519") == nil)
    }

    @Test("host certificates name the principals and CA, are kept, and are signed again when the CA or principals change")
    func certificates() throws {
        let ca = temporary.path + "/ca", otherCA = temporary.path + "/other-ca"
        try sh("ssh-keygen -q -t ed25519 -N '' -C site-ca -f \(ca) && ssh-keygen -q -t ed25519 -N '' -C other-ca -f \(otherCA)")
        let caFingerprint = String(try sh("ssh-keygen -lf \(ca).pub").split(separator: " ")[1])
        let set = try store.keys(for: "node001")
        let principals = ["node001", "node001.cluster.local", "10.77.0.11"]
        let files = try store.certify(set, principals: principals, ca: ca)
        #expect(files.map(\.path) == HostKeyType.allCases.map { "etc/ssh/\($0.fileName)-cert.pub" } + [HostKeyStore.certificateConfigPath])
        #expect(files.allSatisfy { $0.mode == 0o644 && !$0.isSecret })
        let config = String(decoding: files.last!.bytes, as: UTF8.self)
        #expect(config.split(separator: "\n").filter { $0.hasPrefix("HostCertificate ") }
                == HostKeyType.allCases.map { "HostCertificate /etc/ssh/\($0.fileName)-cert.pub" })
        for key in set.keys {
            let certificate = store.directory + "/node001/" + key.type.fileName + "-cert.pub"
            let listing = try sh("ssh-keygen -L -f \(certificate)")
            #expect(listing.contains("host certificate"), "\(listing)")
            #expect(listing.contains("Public key: \(key.type == .ecdsa ? "ECDSA" : key.type.rawValue.uppercased())-CERT \(key.fingerprint)"), "\(listing)")
            #expect(listing.contains("Signing CA: ED25519 \(caFingerprint)"), "\(listing)")
            #expect(listing.contains("Key ID: \"node001\""))
            #expect(listing.contains("Valid: forever"), "\(listing)")
            #expect(try principalsListed(listing) == principals)
        }
        let certificate = store.directory + "/node001/ssh_host_ed25519_key-cert.pub"
        let signed = try identity(certificate)
        #expect(try store.certify(set, principals: principals, ca: ca) == files)
        #expect(try identity(certificate) == signed, "an unchanged certificate was signed again")

        _ = try store.certify(set, principals: ["node001"], ca: ca)
        #expect(try principalsListed(try sh("ssh-keygen -L -f \(certificate)")) == ["node001"])
        _ = try store.certify(set, principals: ["node001"], ca: otherCA)
        let otherFingerprint = String(try sh("ssh-keygen -lf \(otherCA).pub").split(separator: " ")[1])
        #expect(try sh("ssh-keygen -L -f \(certificate)").contains("Signing CA: ED25519 \(otherFingerprint)"))
        #expect(throws: HostKeyError.principal("a,b")) { try store.certify(set, principals: ["a,b"], ca: ca) }

        // Keys rotated after the set was read: the old set is not certified.
        try FileManager.default.removeItem(atPath: store.directory + "/node001")
        _ = try store.keys(for: "node001")
        #expect(throws: HostKeyError.changed(hostname: "node001")) { try store.certify(set, principals: principals, ca: ca) }
    }

    @Test("printing, dumping or encoding a set never shows a private key")
    func secretsStayOut() throws {
        let set = try store.keys(for: "node001")
        var dumped = ""
        dump(set, to: &dumped)
        // Slashes unescaped, so base64 in the JSON reads as it does in the key file.
        let json = JSONEncoder()
        json.outputFormatting = .withoutEscapingSlashes
        var texts = [String(describing: set), String(reflecting: set), "\(set)", dumped,
                     String(decoding: try json.encode(set), as: UTF8.self),
                     String(decoding: try json.encode(set.files), as: UTF8.self)]
        for key in set.keys { texts += [String(describing: key), String(reflecting: key), String(reflecting: key.privateKey)] }
        for file in set.files { texts += [String(describing: file), String(reflecting: file)] }
        for key in set.keys {
            let body = String(decoding: key.privateKey.bytes, as: UTF8.self).split(separator: "\n").filter { !$0.hasPrefix("-----") }
            // (A fragment that happens to occur in a public key line is no secret.)
            let fragments = body.map { String($0.prefix(24)) }.filter { fragment in !set.keys.contains { $0.publicKey.contains(fragment) } } + ["PRIVATE KEY"]
            #expect(fragments.count > 3)
            for text in texts {
                for fragment in fragments { #expect(!text.contains(fragment), "private key text in: \(text.prefix(200))") }
            }
        }
        #expect(String(describing: set).contains(set.key(.ed25519)!.fingerprint))
        #expect(String(decoding: try json.encode(set), as: UTF8.self).contains(set.key(.rsa)!.publicKeyBase64))
    }

    @Test("ensureKeys generates only the sets missing, once per host name, and says how many")
    func ensureMany() async throws {
        _ = try store.keys(for: "node001")
        let names = ["node001", "node002", "NODE002", "node003", "node004", "node005"]
        #expect(try await store.ensureKeys(for: names, concurrency: 3) == 4)
        #expect(try await store.ensureKeys(for: names, concurrency: 3) == 0)
        #expect(try FileManager.default.contentsOfDirectory(atPath: store.directory).sorted() == ["node001", "node002", "node003", "node004", "node005"])
    }

    // MARK: - Helpers

    func mode(_ path: String) -> mode_t {
        var info = stat()
        return stat(path, &info) == 0 ? info.st_mode & 0o7777 : 0
    }

    /// Inode and modification time: a file rewritten, even with the same bytes, changes them.
    func identity(_ path: String) throws -> [Int] {
        var info = stat()
        guard stat(path, &info) == 0 else { throw HostKeyError.system(operation: "stat", path: path, errno: errno) }
        return [Int(info.st_ino), info.st_mtim.tv_sec, info.st_mtim.tv_nsec, Int(info.st_mode)]
    }

    func identities(_ directory: String) throws -> [String: [Int]] {
        var result: [String: [Int]] = [:]
        for name in try FileManager.default.contentsOfDirectory(atPath: directory) { result[name] = try identity(directory + "/" + name) }
        return result
    }

    /// The principal lines of `ssh-keygen -L`.
    func principalsListed(_ listing: String) throws -> [String] {
        let lines = listing.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        let start = try #require(lines.firstIndex(of: "Principals:"))
        return Array(lines[(start + 1)...].prefix { !$0.hasSuffix(":") && !$0.contains(": ") })
    }
}

/// A value shared by test threads.
final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Value
    init(_ value: Value) { stored = value }
    var value: Value { lock.lock(); defer { lock.unlock() }; return stored }
    func append<Element>(_ element: Element) where Value == [Element] { lock.lock(); stored.append(element); lock.unlock() }
}
