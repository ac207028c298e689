import Foundation
import ImageBuildKit
import Testing
@testable import ObjectStore

/// `--store` and `--store-config`: where the endpoint and credentials come from, located errors in the
/// file, and no secret in any message.
@Suite struct StoreSettingsTests {
    let dir: String = {
        var bytes = Array((NSTemporaryDirectory() + "ib-store-settings.XXXXXX").utf8CString)
        return bytes.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }()
    static let secret = "s3cr3t-d0-not-print"
    static let env = ["AWS_ACCESS_KEY_ID": "AKIDENV", "AWS_SECRET_ACCESS_KEY": secret, "AWS_ENDPOINT_URL_S3": "http://10.0.0.5:8333"]

    func file(_ name: String, _ text: String, mode: mode_t = 0o600) -> String {
        let path = dir + "/" + name
        FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
        chmod(path, mode)
        return path
    }

    func message(_ body: () throws -> StoreSettings) -> String {
        do {
            _ = try body()
            return "no error"
        } catch { return "\(error)" }
    }

    @Test func fromTheEnvironment() throws {
        let settings = try StoreSettings.load(store: "s3://boot/site-a/", configFile: nil, environment: Self.env)
        #expect(settings.bucket == "boot" && settings.prefix == "site-a")
        #expect(settings.endpoint == "http://10.0.0.5:8333" && settings.region == "us-east-1")
        #expect(settings.credentials.accessKeyID == "AKIDENV")
        #expect(settings.publicURL(of: "images/minimal/0123/image.squashfs") == "http://10.0.0.5:8333/boot/site-a/images/minimal/0123/image.squashfs")
        #expect(settings.objectPath("images/x") == "/boot/site-a/images/x")
        #expect("\(settings)" == "s3://boot/site-a at http://10.0.0.5:8333")
        var env = Self.env
        env["AWS_ENDPOINT_URL_S3"] = nil
        env["AWS_ENDPOINT_URL"] = "http://rgw.example/"
        env["AWS_DEFAULT_REGION"] = "eu-1"
        env["AWS_REGION"] = "eu-2"
        let other = try StoreSettings.load(store: "s3://boot", configFile: nil, environment: env)
        #expect(other.endpoint == "http://rgw.example" && other.region == "eu-2" && other.prefix == "")
        #expect(other.publicURL(of: "images/a") == "http://rgw.example/boot/images/a")
    }

    @Test func missingPiecesNameTheBucketAndEndpointNeverTheSecret() {
        var env = Self.env
        env["AWS_SECRET_ACCESS_KEY"] = nil
        #expect(message { try StoreSettings.load(store: "s3://boot/p", configFile: nil, environment: env) }
                == "s3://boot at http://10.0.0.5:8333: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or access_key_id and secret_access_key_file in --store-config")
        #expect(message { try StoreSettings.load(store: "s3://boot/p", configFile: nil, environment: ["AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": Self.secret]) }
                .hasPrefix("s3://boot: no endpoint"))
    }

    @Test func credentialsInAURLAreRefusedAndNotRepeated() {
        for store in ["s3://AKID:\(Self.secret)@boot/p", "s3://\(Self.secret)@boot"] {
            let text = message { try StoreSettings.load(store: store, configFile: nil, environment: Self.env) }
            #expect(text.contains("holds credentials"), "\(text)")
            #expect(!text.contains(Self.secret), "\(text)")
        }
        var env = Self.env
        env["AWS_ENDPOINT_URL_S3"] = "http://AKID:\(Self.secret)@10.0.0.5:8333"
        let text = message { try StoreSettings.load(store: "s3://boot", configFile: nil, environment: env) }
        #expect(text.hasPrefix("AWS_ENDPOINT_URL_S3: the endpoint URL holds credentials"), "\(text)")
        #expect(!text.contains(Self.secret))
        #expect(message { try StoreSettings.load(store: "http://boot", configFile: nil, environment: Self.env) }.hasPrefix("--store: expected s3://BUCKET/PREFIX"))
        #expect(message { try StoreSettings.load(store: "s3://Boot_1/x", configFile: nil, environment: Self.env) }.contains("is not a bucket name"))
        #expect(message { try StoreSettings.load(store: "s3://boot/../x", configFile: nil, environment: Self.env) }.contains("may not hold '..'"))
    }

    @Test func nodesNeedPlainHTTP() throws {
        var env = Self.env
        env["AWS_ENDPOINT_URL_S3"] = "https://s3.example"
        #expect(message { try StoreSettings.load(store: "s3://boot", configFile: nil, environment: env) }
            .hasPrefix("AWS_ENDPOINT_URL_S3: nodes fetch images over plain http"))
        env["IMAGEBUILD_STORE_PUBLIC_URL"] = "http://s3-nodes.example:8080/boot/"
        let settings = try StoreSettings.load(store: "s3://boot/p", configFile: nil, environment: env)
        #expect(settings.endpoint == "https://s3.example")
        #expect(settings.publicURL(of: "images/a") == "http://s3-nodes.example:8080/boot/p/images/a")
    }

    @Test func theConfigFileComesFirstAndItsSecretFileMustBePrivate() throws {
        let secretFile = file("secret", Self.secret + "\n")
        let config = file("store.yaml", """
            endpoint: http://127.0.0.1:8333
            region: site-1
            access_key_id: AKIDFILE
            secret_access_key_file: secret
            public_url: http://10.77.0.1:8333/boot
            part_size_mib: 16
            """, mode: 0o644)
        let settings = try StoreSettings.load(store: "s3://boot/x", configFile: config, environment: Self.env)
        #expect(settings.endpoint == "http://127.0.0.1:8333" && settings.region == "site-1")
        #expect(settings.credentials.accessKeyID == "AKIDFILE" && settings.credentials.secretAccessKey == Self.secret)
        #expect(settings.partSize == 16 << 20)
        #expect(settings.publicURL(of: "k") == "http://10.77.0.1:8333/boot/x/k")

        chmod(secretFile, 0o644)
        let text = message { try StoreSettings.load(store: "s3://boot/x", configFile: config, environment: Self.env) }
        #expect(text == "\(config):4:25: secret_access_key_file \(secretFile) has mode 0644: others can read it (chmod 600 \(secretFile))")
        #expect(!text.contains(Self.secret))
    }

    @Test(arguments: [
        ("endpoint: http://h:1\nsecret_acces_key_file: s\n", "2:1: unknown key 'secret_acces_key_file' (did you mean 'secret_access_key_file'?)"),
        ("endpoint: http://h:1\naccess_key_id: A\n", "2:16: access_key_id without a secret (add secret_access_key_file: FILE (mode 0600))"),
        ("endpoint: [a]\n", "1:11: expected a string, found a list"),
        ("endpoint: ftp://h\n", "1:11: endpoint must be http://HOST[:PORT] or https://HOST[:PORT], found 'ftp://h'"),
        ("part_size_mib: 2\n", "1:16: 2 is out of range 5...5120"),
        ("endpoint: http://h:1\naccess_key_id: A\nsecret_access_key: \(secret)\n", "3:20: secret_access_key in a file others can read"),
        ("endpoint: http://h:1\n  region: x\n", "2:9: YAML syntax"),
    ])
    func configErrorsAreLocated(text: String, expected: String) {
        let config = file("bad-\(abs(text.hashValue)).yaml", text, mode: 0o644)
        let got = message { try StoreSettings.load(store: "s3://boot", configFile: config, environment: [:]) }
        #expect(got.hasPrefix("\(config):\(expected)"), "\(got)")
        #expect(!got.contains(Self.secret), "\(got)")
    }
}
