import BootProtocols
@testable import BootServer
import Foundation
import Testing

/// Who may report a node's stages, and which names the boot root never serves: pure rules, tested
/// without a socket (the HTTP service tests check the same over the wire).
@Suite("Stage-report trust and withheld names")
struct ReportTrustTests {
    let alpha = MACAddress(0x52, 0x54, 0, 0xaa, 0, 1)
    let beta = MACAddress(0x52, 0x54, 0, 0xaa, 0, 2)
    let alphaFixed = IPv4Address(10, 0, 0, 11)
    let betaLease = IPv4Address(10, 0, 0, 150)
    let stranger = IPv4Address(10, 0, 0, 99)

    func admission(tokens: ReportTokens? = nil, now: Date = Date(timeIntervalSince1970: 1_800_000_000)) -> ReportAdmission {
        let alpha = self.alpha, beta = self.beta, alphaFixed = self.alphaFixed, betaLease = self.betaLease
        let macAt: @Sendable (IPv4Address) -> MACAddress? = { ip in ip == alphaFixed ? alpha : ip == betaLease ? beta : nil }
        let addressesOf: @Sendable (MACAddress) -> [IPv4Address] = { mac in mac == alpha ? [alphaFixed] : mac == beta ? [betaLease] : [] }
        var verify: (@Sendable (String, MACAddress) -> Bool)?
        if let tokens { verify = { token, mac in tokens.verify(token, for: mac, at: now) } }
        return ReportAdmission(macAt: macAt, addressesOf: addressesOf, verifyToken: verify)
    }

    @Test func aReportIsBelievedOnlyFromTheNodesOwnAddress() {
        let rule = admission()
        #expect(rule.decide(mac: "52:54:00:aa:00:01", token: nil, from: alphaFixed) == .accept(alpha))
        #expect(rule.decide(mac: "52-54-00-AA-00-02", token: nil, from: betaLease) == .accept(beta))
        // Another machine on the boot network, or one node for another: refused, and says why.
        guard case .refused(let why) = rule.decide(mac: "52:54:00:aa:00:01", token: nil, from: stranger) else {
            Issue.record("a report from a stranger was not refused"); return
        }
        #expect(why.contains("10.0.0.99") && why.contains("10.0.0.11"))
        guard case .refused = rule.decide(mac: "52:54:00:aa:00:01", token: nil, from: betaLease) else {
            Issue.record("beta reported for alpha"); return
        }
        guard case .refused(let unknown) = rule.decide(mac: "52:54:00:ff:00:09", token: nil, from: stranger) else {
            Issue.record("a MAC with no address was believed"); return
        }
        #expect(unknown.contains("no fixed address"))
        guard case .refused = rule.decide(mac: "52:54:00:aa:00:01", token: nil, from: nil) else {
            Issue.record("a report without a sender address was believed"); return
        }
    }

    @Test("malformed MACs are 400, never attributed", arguments: [
        String(repeating: "a", count: 500), "zz", "", "52:54:00:aa:00", "52:54:00:aa:00:01:02", "unknown",
    ])
    func malformedMACs(text: String) {
        guard case .malformed(let why) = admission().decide(mac: text, token: nil, from: alphaFixed) else {
            Issue.record("'\(text.prefix(20))' was not refused as malformed"); return
        }
        #expect(why.contains("not a MAC address"))
        #expect(why.count < 120, "the error repeats a long input")
    }

    @Test func aReportWithoutAMACIsAttributedByTheSendersOwnAddressOnly() {
        let rule = admission()
        #expect(rule.decide(mac: nil, token: nil, from: alphaFixed) == .accept(alpha))
        #expect(rule.decide(mac: nil, token: nil, from: betaLease) == .accept(beta))
        guard case .malformed = rule.decide(mac: nil, token: nil, from: stranger) else {
            Issue.record("a MAC-less report from an unknown address was attributed"); return
        }
    }

    @Test func tokensStandInForTheAddressWhenTheyAreOn() {
        let now = Date(timeIntervalSince1970: 1_800_000_000)
        let tokens = ReportTokens(key: Array(repeating: 7, count: 32))
        let rule = admission(tokens: tokens, now: now)
        let token = tokens.issue(for: alpha, at: now.addingTimeInterval(-600))
        #expect(rule.decide(mac: "52:54:00:aa:00:01", token: token, from: stranger) == .accept(alpha))
        // Bound to the MAC, to the key, and to its lifetime; tampering fails.
        guard case .refused = rule.decide(mac: "52:54:00:aa:00:02", token: token, from: stranger) else {
            Issue.record("alpha's token was accepted for beta"); return
        }
        let otherKey = ReportTokens(key: Array(repeating: 8, count: 32)).issue(for: alpha, at: now)
        #expect(!tokens.verify(otherKey, for: alpha, at: now))
        #expect(!tokens.verify(tokens.issue(for: alpha, at: now.addingTimeInterval(-7 * 3600)), for: alpha, at: now))
        #expect(!tokens.verify(tokens.issue(for: alpha, at: now.addingTimeInterval(3600)), for: alpha, at: now))
        var tampered = Array(token.utf8)
        tampered[tampered.count - 1] = tampered.last == UInt8(ascii: "0") ? UInt8(ascii: "1") : UInt8(ascii: "0")
        #expect(!tokens.verify(String(decoding: tampered, as: UTF8.self), for: alpha, at: now))
        for junk in ["", ".", "x.y", "1.", "99999999999999999999.00"] { #expect(!tokens.verify(junk, for: alpha, at: now)) }
        // With tokens off, a token changes nothing.
        guard case .refused = admission().decide(mac: "52:54:00:aa:00:01", token: token, from: stranger) else {
            Issue.record("a token was accepted with tokens off"); return
        }
    }

    @Test func theTokenKeyIsKeptPrivateAndReused() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ib-token-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/report-token.key"
        let first = try ReportTokens(keyFile: path)
        #expect(try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int == 0o600)
        let now = Date()
        #expect(try ReportTokens(keyFile: path).verify(first.issue(for: alpha, at: now), for: alpha, at: now))
        chmod(path, 0o644)
        #expect(throws: StartupError.self) { try ReportTokens(keyFile: path) }
    }

    @Test("withheld names", arguments: [
        (".publish/lock", true), (".publish/current/publish.json", true), (".publish/history.jsonl", true),
        ("publish.json", true), ("images/x/.0123.tmp-42/vmlinuz", true), (".hidden", true), ("a/..", true),
        ("pxelinux.cfg/default", false), ("./pxelinux.0", false), ("images/x/0123/vmlinuz", false),
        ("ipxe/boot.ipxe", false), ("a/./b", false), ("images/publish.json", false), ("x.publish.json", false),
    ])
    func withheld(path: String, withheld: Bool) {
        #expect(ServedNames.isWithheld(path) == withheld)
    }
}
