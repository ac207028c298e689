import BootProtocols
@testable import BootServer
import Foundation
import Synchronization
import Testing

/// A clock the test moves by hand.
final class TimelineTestClock: Sendable {
    private let current = Mutex(Date(timeIntervalSince1970: 1_700_000_000))
    var now: Date { current.withLock { $0 } }
    func advance(_ seconds: TimeInterval) { current.withLock { $0 += seconds } }
    var function: @Sendable () -> Date { { self.now } }
}

func timelineTemporaryDirectory() throws -> String {
    let path = NSTemporaryDirectory() + "timeline-test-" + UUID().uuidString
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

let nodeA = MACAddress(0x52, 0x54, 0x00, 0x77, 0x00, 0x01)
let nodeB = MACAddress(0x52, 0x54, 0x00, 0x77, 0x00, 0x02)

/// A whole boot as the server sees it, with the seconds between steps.
let typicalBoot: [(TimeInterval, BootObservation)] = [
    (0, .dhcp(.discover, address: nil, detail: nil)),
    (1, .dhcp(.offer, address: IPv4Address(10, 77, 0, 11), detail: nil)),
    (0, .dhcp(.request, address: IPv4Address(10, 77, 0, 11), detail: nil)),
    (0, .dhcp(.ack, address: IPv4Address(10, 77, 0, 11), detail: nil)),
    (1, .transfer(.tftp, path: "ipxe/undionly.kpxe", bytes: 70_000, size: nil, outcome: .completed)),
    (2, .dhcp(.discover, address: nil, detail: "iPXE")),
    (0, .dhcp(.ack, address: IPv4Address(10, 77, 0, 11), detail: nil)),
    (1, .bootScript(image: "compute", detail: "registered")),
    (1, .transfer(.http, path: "images/compute/abcd/vmlinuz", bytes: 8_000_000, size: 8_000_000, outcome: .completed)),
    (2, .transfer(.http, path: "images/compute/abcd/initramfs.img", bytes: 20_000_000, size: 20_000_000, outcome: .completed)),
    (5, .dhcp(.discover, address: nil, detail: "udhcpc")),
    (0, .dhcp(.ack, address: IPv4Address(10, 77, 0, 11), detail: nil)),
    (1, .report(.stage1Start, detail: "eth0 10.77.0.11")),
    (3, .transfer(.http, path: "images/compute/abcd/image.tar.gz", bytes: 300_000_000, size: 300_000_000, outcome: .completed)),
    (0, .report(.imageDownloaded, detail: "300000000 bytes")),
    (2, .report(.imageVerified, detail: nil)),
    (4, .report(.switchRoot, detail: "/sbin/init")),
    (10, .report(.up, detail: nil)),
]

@Suite("Boot timeline: stages derived from events")
struct NodeBootStateTests {
    @Test("a whole boot walks the stages in order and ends up, with its duration")
    func wholeBoot() {
        var state = NodeBootState(mac: nodeA)
        var time = Date(timeIntervalSince1970: 1_000)
        var stages: [BootStage] = []
        for (delay, observation) in typicalBoot {
            time += delay
            state.apply(BootEvent(time: time, mac: nodeA, boot: state.boot(for: observation), observation: observation))
            if stages.last != state.stage { stages.append(state.stage) }
        }
        // iPXE's and stage 1's own DHCP show as dhcp again: the stage is the latest activity.
        #expect(stages == [.dhcp, .bootloader, .dhcp, .config, .kernel, .initrd, .dhcp, .stage1, .image, .switchRoot, .up])
        #expect(state.boot == 1)
        #expect(state.bootDuration == typicalBoot.map(\.0).reduce(0, +))
        #expect(state.address == IPv4Address(10, 77, 0, 11))
        #expect(state.image == "compute")
        #expect(state.furthest == .up)
        #expect(!state.isStuck(now: time + 86_400))
    }

    @Test("DHCP renewals of a running node keep it up; a DISCOVER after up starts the next boot")
    func renewalsAndReboot() {
        var state = NodeBootState(mac: nodeA)
        var time = Date(timeIntervalSince1970: 1_000)
        func feed(_ observation: BootObservation, after seconds: TimeInterval = 1) {
            time += seconds
            state.apply(BootEvent(time: time, mac: nodeA, boot: state.boot(for: observation), observation: observation))
        }
        for (delay, observation) in typicalBoot { feed(observation, after: delay) }
        let upSince = state.stageSince
        feed(.dhcp(.request, address: IPv4Address(10, 77, 0, 11), detail: "renew"), after: 1800)
        feed(.dhcp(.ack, address: IPv4Address(10, 77, 0, 11), detail: nil))
        #expect(state.stage == .up)
        #expect(state.stageSince == upSince)
        #expect(state.boot == 1)
        feed(.report(.up, detail: "again"))
        #expect(state.boot == 1)

        feed(.dhcp(.discover, address: nil, detail: nil), after: 600)
        #expect(state.boot == 2)
        #expect(state.stage == .dhcp)
        #expect(state.bootDuration == nil)
        #expect(state.bootStarted == time)
        #expect(state.image == nil)
    }

    @Test("without DHCP (another server answers), a boot loader fetch after up starts a new boot")
    func rebootSeenByTFTPOnly() {
        var state = NodeBootState(mac: nodeA)
        let up = BootObservation.report(.up, detail: nil)
        state.apply(BootEvent(time: Date(timeIntervalSince1970: 10), mac: nodeA, boot: state.boot(for: up), observation: up))
        let loader = BootObservation.transfer(.tftp, path: "pxelinux.0", bytes: 1, size: nil, outcome: .completed)
        #expect(state.boot(for: loader) == 2)
        let kernel = BootObservation.transfer(.http, path: "images/a/b/vmlinuz", bytes: 1, size: 1, outcome: .completed)
        #expect(state.boot(for: kernel) == 1)
    }

    @Test("stuck after the stage's threshold, with the hint for where it stopped", arguments: [
        (BootObservation.dhcp(.offer, address: IPv4Address(10, 0, 0, 5), detail: nil), "another DHCP server"),
        (BootObservation.dhcp(.discover, address: nil, detail: nil), "no offer sent"),
        (BootObservation.dhcp(.ack, address: IPv4Address(10, 0, 0, 5), detail: nil), "no boot file fetched"),
        (BootObservation.transfer(.tftp, path: "pxelinux.0", bytes: 1, size: nil, outcome: .completed), "no config fetched"),
        (BootObservation.transfer(.http, path: "images/a/b/initramfs.img", bytes: 1, size: 1, outcome: .completed), "stage 1 never reported"),
    ])
    func stuckWithHint(observation: BootObservation, hint: String) throws {
        var state = NodeBootState(mac: nodeA)
        let start = Date(timeIntervalSince1970: 5_000)
        state.apply(BootEvent(time: start, mac: nodeA, boot: 1, observation: observation))
        let limit = try #require(StuckHints.threshold(for: state.stage))
        #expect(!state.isStuck(now: start + limit - 1))
        #expect(state.isStuck(now: start + limit + 1))
        let text = try #require(state.hint)
        #expect(text.contains(hint), "\(text)")
    }

    @Test("stage 1's own DHCP after the initramfs gets the stage-1 hint, not the DHCP one")
    func stageOneDHCPHint() throws {
        var state = NodeBootState(mac: nodeA)
        var time = Date(timeIntervalSince1970: 1)
        for observation: BootObservation in [
            .dhcp(.discover, address: nil, detail: nil),
            .transfer(.http, path: "images/a/b/vmlinuz", bytes: 1, size: 1, outcome: .completed),
            .transfer(.http, path: "images/a/b/initramfs.img", bytes: 1, size: 1, outcome: .completed),
            .dhcp(.discover, address: nil, detail: nil), .dhcp(.ack, address: IPv4Address(10, 0, 0, 9), detail: nil),
        ] {
            time += 1
            state.apply(BootEvent(time: time, mac: nodeA, boot: state.boot(for: observation), observation: observation))
        }
        #expect(state.stage == .dhcp)
        #expect(try #require(state.hint).contains("stage 1 never reported"))
    }

    @Test("a failure report is stuck at once and keeps its detail")
    func failed() {
        var state = NodeBootState(mac: nodeA)
        let time = Date(timeIntervalSince1970: 1)
        state.apply(BootEvent(time: time, mac: nodeA, boot: 1, observation: .report(.failed, detail: "verify: sha256 mismatch")))
        #expect(state.isStuck(now: time))
        #expect(state.failure == "verify: sha256 mismatch")
        #expect(state.stage == .failed)
    }

    @Test("stages compare in the order a boot goes, which is their declaration order")
    func stageOrder() {
        let stages = BootStage.allCases
        for (i, a) in stages.enumerated() {
            for (j, b) in stages.enumerated() { #expect((a < b) == (i < j), "\(a) < \(b)") }
        }
    }

    @Test("file names map to stages", arguments: [
        ("pxelinux.0", BootStage.bootloader), ("ldlinux.c32", .bootloader), ("ipxe/ipxe.efi", .bootloader),
        ("pxelinux.cfg/01-52-54-00-77-00-01", .config), ("pxelinux.cfg/default", .config), ("ipxe/boot.ipxe", .config),
        ("images/compute/0123/vmlinuz", .kernel), ("images/compute/0123/initramfs.img", .initrd),
        ("images/compute/0123/image.tar.gz", .image), ("images/compute/0123/image.squashfs", .image),
        ("ipxe/undionly.kpxe", .bootloader),
        // The Secure Boot chain: shim and GRUB, then GRUB's walk.
        ("grub/shimx64.efi", .bootloader), ("grub/grubx64.efi", .bootloader),
        ("grub/grub.cfg-01-52-54-00-77-00-01", .config), ("grub/grub.cfg-0A4D000B", .config), ("grub/grub.cfg", .config),
        // Files that are no step of a boot move no stage (a manifest fetched by hand restarted a node's timeline).
        ("images/compute/0123/manifest.json", nil), ("images/compute/0123/cmdline", nil), ("favicon.ico", nil),
        ("overlays/0a1b.tar.gz", nil), ("boot/v1/secrets/52-54-00-77-00-01", nil), ("images/compute/0123/", nil),
        // A leading or trailing '/' changes nothing.
        ("/images/compute/0123/vmlinuz", .kernel), ("/pxelinux.cfg/default", .config), ("ipxe/", nil), ("pxelinux.cfg/", .config),
        // Loader extensions in any case; the other names as written.
        ("IPXE.EFI", .bootloader), ("boot/PXELINUX.0", .bootloader), ("images/x/VMLINUZ", nil), ("", nil), ("/", nil),
    ])
    func fileStages(path: String, stage: BootStage?) {
        #expect(BootStage.forFile(path) == stage)
    }
}

@Suite("Boot timeline: recording, bounds, journal")
struct BootTimelineTests {
    @Test("events are kept per node up to the bound, oldest dropped")
    func bounded() throws {
        var configuration = BootTimelineConfiguration()
        configuration.eventsPerNode = 10
        let clock = TimelineTestClock()
        let timeline = try BootTimeline(configuration: configuration, logger: testLogger("timeline"), now: clock.function)
        for index in 0..<25 {
            clock.advance(1)
            timeline.record(.transfer(.tftp, path: "file\(index)", bytes: 1, size: nil, outcome: .completed), mac: nodeA)
        }
        let events = timeline.events(for: nodeA)
        #expect(events.count == 10)
        #expect(events.first?.observation == .transfer(.tftp, path: "file15", bytes: 1, size: nil, outcome: .completed))
        #expect(timeline.events(for: nodeB).isEmpty)
    }

    /// pxelinux does not linger after the initramfs's last block; when its final ACK is lost, the TFTP
    /// server reports the transfer a client time-out later, after stage 1 has started or the node is up.
    @Test("a transfer reported late is placed where it happened and does not set the node back")
    func lateTransferReport() throws {
        let clock = TimelineTestClock()
        let timeline = try BootTimeline(logger: testLogger("timeline"), now: clock.function)
        let ip = IPv4Address(10, 77, 0, 21)
        timeline.record(.dhcp(.ack, address: ip, detail: nil), mac: nodeA)
        clock.advance(1)
        timeline.record(.transfer(.tftp, path: "images/m/1/vmlinuz", bytes: 8, size: nil, outcome: .completed), ip: ip)
        clock.advance(3)
        timeline.record(.report(.stage1Start, detail: nil), mac: nodeA)
        clock.advance(4)
        timeline.record(.report(.up, detail: nil), mac: nodeA)
        clock.advance(1)
        // The initramfs's last block went out 7 s ago, between the kernel and stage 1.
        let initrd = BootObservation.transfer(.tftp, path: "images/m/1/initramfs.img", bytes: 9, size: nil, outcome: .completed)
        timeline.record(initrd, ip: ip, ago: 7)
        #expect(timeline.events(for: nodeA).map(\.observation.stage) == [.dhcp, .kernel, .initrd, .stage1, .up])
        #expect(timeline.node(nodeA)?.stage == .up)
        #expect(timeline.node(nodeA)?.furthest == .up)
    }

    @Test("a file that is no boot step (a manifest) neither restarts a node's boot nor moves its stage; events keep their sender")
    func nonBootFiles() throws {
        let timeline = try BootTimeline(logger: testLogger("timeline"))
        let ip = IPv4Address(10, 77, 0, 21)
        timeline.record(.dhcp(.ack, address: ip, detail: nil), mac: nodeA)
        timeline.record(.report(.up, detail: nil), mac: nodeA, source: ip)
        let manifest = BootObservation.transfer(.http, path: "images/m/1/manifest.json", bytes: 300, size: 300, outcome: .completed)
        let event = try #require(timeline.record(manifest, ip: ip))
        #expect(event.boot == 1)
        #expect(event.source == ip)
        #expect(timeline.node(nodeA)?.stage == .up)
        #expect(timeline.node(nodeA)?.boot == 1)
        // Its JSON has no stage and names the sender; both encoders agree, and it reads back.
        var bytes: [UInt8] = []
        event.writeJSON(into: &bytes, includeSummary: false)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        #expect(String(decoding: bytes, as: UTF8.self) == String(decoding: try encoder.encode(event), as: UTF8.self))
        #expect(!String(decoding: bytes, as: UTF8.self).contains("\"stage\""))
        #expect(String(decoding: bytes, as: UTF8.self).contains("\"source\":\"10.77.0.21\""))
        // (Time goes through Unix seconds as a Double: equal to within a microsecond, not bit for bit.)
        let decoded = try JSONDecoder().decode(BootEvent.self, from: Data(bytes))
        #expect(decoded.source == event.source && decoded.observation == event.observation && decoded.mac == event.mac)
        #expect(abs(decoded.time.timeIntervalSince(event.time)) < 1e-6)
        // A loader fetched after `up` is a reboot.
        let loader = BootObservation.transfer(.tftp, path: "pxelinux.0", bytes: 10, size: nil, outcome: .completed)
        #expect(timeline.record(loader, ip: ip)?.boot == 2)
    }

    @Test("TFTP and HTTP events by IP are attributed through DHCP acks; unknown addresses are counted")
    func attribution() throws {
        let timeline = try BootTimeline(logger: testLogger("timeline"))
        let ip = IPv4Address(10, 77, 0, 21)
        let file = BootObservation.transfer(.tftp, path: "pxelinux.0", bytes: 10, size: nil, outcome: .completed)
        #expect(timeline.record(file, ip: ip) == nil)
        #expect(timeline.unattributedCount == 1)
        timeline.record(.dhcp(.ack, address: ip, detail: nil), mac: nodeB)
        #expect(timeline.mac(for: ip) == nodeB)
        let event = try #require(timeline.record(file, ip: ip))
        #expect(event.mac == nodeB)
        #expect(timeline.node(nodeB)?.stage == .bootloader)
    }

    @Test("the journal survives a restart, torn last line included, and is compacted on start")
    func journalRestart() throws {
        let directory = try timelineTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var configuration = BootTimelineConfiguration(stateDirectory: directory)
        configuration.eventsPerNode = 12
        let clock = TimelineTestClock()
        do {
            let timeline = try BootTimeline(configuration: configuration, logger: testLogger("timeline"), now: clock.function)
            for (delay, observation) in typicalBoot {
                clock.advance(delay)
                timeline.record(observation, mac: nodeA)
            }
            clock.advance(1)
            timeline.record(.report(.failed, detail: "unpack: no space"), mac: nodeB)
            try timeline.flush()
            let before = try #require(timeline.node(nodeA))
            #expect(before.stage == .up)
        }
        // A crash in the middle of the next batch append: half a line at the end.
        let path = directory + "/timeline.jsonl"
        let handle = try #require(FileHandle(forWritingAtPath: path))
        handle.seekToEndOfFile()
        handle.write(Data(#"{"time":1700000100.5,"mac":"52:54:00:77:00:01","boot":1,"kind":"rep"#.utf8))
        try handle.close()

        let again = try BootTimeline(configuration: configuration, logger: testLogger("timeline"), now: clock.function)
        let nodeAState = try #require(again.node(nodeA))
        #expect(nodeAState.stage == .up)
        #expect(again.events(for: nodeA).count == 12)
        #expect(again.node(nodeB)?.failure == "unpack: no space")
        #expect(again.mac(for: IPv4Address(10, 77, 0, 11)) == nodeA)
        // Compacted: exactly the kept events, every line whole.
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 13)
        #expect(try String(contentsOfFile: path, encoding: .utf8).hasSuffix("\n"))
    }

    /// The writer once spun: its wait raced a cancelled stream iteration, which finishes the stream,
    /// so every later wait returned at once and an idle server used a full core.
    @Test("the journal writer waits between flushes instead of spinning, and stops on cancellation")
    func writerPace() async throws {
        let directory = try timelineTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var configuration = BootTimelineConfiguration(stateDirectory: directory)
        configuration.flushInterval = .milliseconds(100)
        let timeline = try BootTimeline(configuration: configuration, logger: testLogger("timeline"))
        let writer = Task { try await timeline.run() }
        timeline.record(.report(.up, detail: nil), mac: nodeA)
        // It writes the event out (bounded wait: on 2 busy cores the cooperative pool can stall for seconds).
        let clock = ContinuousClock()
        let start = clock.now
        while timeline.flushCount == 0 && clock.now - start < .seconds(120) { try await Task.sleep(for: .milliseconds(20)) }
        let before = timeline.flushCount
        try await Task.sleep(for: .seconds(1))
        let during = timeline.flushCount - before
        writer.cancel()
        try await writer.value
        // About 10 wake-ups in a second (fewer on a slow machine); the spinning writer made thousands.
        #expect(before >= 1, "the writer never flushed")
        #expect(during <= 40, "\(during) flushes in 1 s: the writer spins")
        #expect(try String(contentsOfFile: directory + "/timeline.jsonl", encoding: .utf8).contains("\"up\""))
    }

    @Test("the journal is compacted while running, so it stays bounded")
    func periodicCompaction() throws {
        let directory = try timelineTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var configuration = BootTimelineConfiguration(stateDirectory: directory)
        configuration.eventsPerNode = 50
        let timeline = try BootTimeline(configuration: configuration, logger: testLogger("timeline"))
        let path = directory + "/timeline.jsonl"
        var largest = 0
        for index in 0..<30_000 {
            timeline.record(.transfer(.tftp, path: "f\(index)", bytes: 1, size: nil, outcome: .completed), mac: index % 2 == 0 ? nodeA : nodeB)
            if index % 1000 == 999 {
                try timeline.flush()
                largest = max(largest, try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").count)
            }
        }
        #expect(largest <= 10_100)
        let reloaded = try BootTimeline(configuration: configuration, logger: testLogger("timeline"))
        #expect(reloaded.events(for: nodeA).count == 50)
        #expect(reloaded.events(for: nodeA).last?.observation == .transfer(.tftp, path: "f29998", bytes: 1, size: nil, outcome: .completed))
    }

    @Test("events round-trip through the journal's JSON", arguments: typicalBoot.map(\.1) + [
        .transfer(.http, path: "images/x/y/image.tar.gz", bytes: 5, size: 10, outcome: .incomplete("client went away")),
        .transfer(.tftp, path: "nope", bytes: 0, size: nil, outcome: .refused("file not found")),
        .bootScript(image: nil, detail: "not registered"),
        .dhcp(.ignored, address: nil, detail: "not a PXE client"),
    ])
    func codable(observation: BootObservation) throws {
        let event = BootEvent(time: Date(timeIntervalSince1970: 1_700_000_000.25), mac: nodeA, boot: 3, observation: observation)
        let decoded = try JSONDecoder().decode(BootEvent.self, from: JSONEncoder().encode(event))
        #expect(decoded == event)
    }

    @Test("the writer service flushes in batches and once more on graceful shutdown")
    func writerService() async throws {
        let directory = try timelineTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var configuration = BootTimelineConfiguration(stateDirectory: directory)
        configuration.flushInterval = .seconds(3600)
        let timeline = try BootTimeline(configuration: configuration, logger: testLogger("timeline"))
        let task = Task { try await timeline.run() }
        timeline.record(.report(.up, detail: nil), mac: nodeA)
        // The writer sleeps for an hour: cancellation must still end it with a final flush.
        try await Task.sleep(for: .milliseconds(100))
        task.cancel()
        try await task.value
        let reloaded = try BootTimeline(configuration: configuration, logger: testLogger("timeline"))
        #expect(reloaded.node(nodeA)?.stage == .up)
    }
}

@Suite("Boot events as JSON")
struct BootEventJSONTests {
    static let mac = MACAddress(0x52, 0x54, 0x00, 0xaa, 0x00, 0x01)
    static let awkward = "quote \" backslash \\ slash / tab \t newline \n bell \u{07} del \u{7f} é ✓ \u{1F600}"

    static let events: [BootEvent] = {
        let observations: [BootObservation] = [
            .dhcp(.discover, address: nil, detail: nil),
            .dhcp(.ack, address: IPv4Address(10, 0, 0, 5), detail: awkward),
            .transfer(.tftp, path: "pxelinux.cfg/01-52-54-00-aa-00-01", bytes: 0, size: nil, outcome: .refused("no such file")),
            .transfer(.http, path: "images/compute/abc/image.tar.gz", bytes: 123_456_789_012, size: 123_456_789_012, outcome: .completed),
            .transfer(.http, path: "a/\"b\"", bytes: 5, size: 10, outcome: .incomplete(awkward)),
            .bootScript(image: nil, detail: nil),
            .bootScript(image: "compute", detail: "registered"),
            .report(.stage1Start, detail: "eth0 10.0.0.5"),
            .report(.up, detail: nil),
        ]
        let times = [1_700_000_000.0, 1_795_338_245.123_456, 1_700_000_000.5, 0.25]
        return observations.enumerated().map { index, observation in
            BootEvent(time: Date(timeIntervalSince1970: times[index % times.count]), mac: mac, boot: index + 1, observation: observation)
        }
    }()

    @Test("the API's form is byte for byte what JSONEncoder writes with sorted keys and unescaped slashes")
    func sameAsJSONEncoder() throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.userInfo[BootEvent.includeSummary] = true
        for event in Self.events {
            var bytes: [UInt8] = []
            event.writeJSON(into: &bytes, includeSummary: true)
            let expected = try encoder.encode(event)
            #expect(String(decoding: bytes, as: UTF8.self) == String(decoding: expected, as: UTF8.self))
        }
    }

    @Test("journal lines decode back to the same events")
    func journalRoundTrip() throws {
        let data = TimelineJournal.lines(Self.events)
        let lines = data.split(separator: UInt8(ascii: "\n"))
        #expect(lines.count == Self.events.count)
        for (line, event) in zip(lines, Self.events) {
            #expect(try JSONDecoder().decode(BootEvent.self, from: Data(line)) == event)
            #expect(!String(decoding: line, as: UTF8.self).contains("summary"))
        }
    }
}
