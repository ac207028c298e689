import BootProtocols
import DatagramIO
import Foundation
import ImageBuildKit
import NIOCore
import NIOPosix

/// The stages a simulated node goes through, in order, as the report names them.
enum Stage: Int, CaseIterable, Sendable {
    case dhcp, bootloader, config, kernel, initrd, image, overlay, events

    var name: String {
        switch self {
        case .dhcp: "dhcp"
        case .bootloader: "tftp bootloader"
        case .config: "config walk"
        case .kernel: "kernel"
        case .initrd: "initrd"
        case .image: "image"
        case .overlay: "node files"
        case .events: "stage events"
        }
    }
}

/// What one node's boot came to: seconds per stage it finished, and where it stopped if it did.
struct NodeResult: Sendable {
    var durations: [Double?] = Array(repeating: nil, count: Stage.allCases.count)
    var failure: (stage: Stage, reason: String)?
    var started: ContinuousClock.Instant
    var ended: ContinuousClock.Instant
    var dhcpRetries = 0
    var tftpRequests = 0
}

/// Settings every node shares.
struct StormSettings: Sendable {
    var group: any EventLoopGroup
    /// Runs every TFTP read (see `TFTPFetchEndpoint`).
    var reactor: DatagramReactor
    var dhcp: DHCPPort
    /// The DHCP time-outs of a PXE ROM (4, 8, 16, 32 s: about a minute before it gives up).
    var dhcpTimeouts: [TimeAmount]
    var tftpTimeout: TimeAmount
    var tftpRetries: Int
    var httpTimeout: TimeAmount
    var romBlockSize: Int
    var pxelinuxBlockSize: Int
    var postEvents: Bool
    /// Fetch the node's secrets and overlay archives when its command line names them, as stage 1 does.
    var fetchNodeFiles: Bool
    var bindLeasedAddress: Bool
    var architecture: DHCPClientArchitecture
    var deadline: ContinuousClock.Instant
}

/// One simulated machine doing, in order, what its firmware, pxelinux and stage 1 do on the wire.
struct SimulatedNode: Sendable {
    let index: Int
    let mac: MACAddress
    let settings: StormSettings

    private struct Failure: Error {
        var stage: Stage
        var reason: String
    }

    func boot() async -> NodeResult {
        let clock = ContinuousClock()
        var result = NodeResult(started: clock.now, ended: clock.now)
        do {
            try await run(&result, clock: clock)
        } catch let failure as Failure {
            result.failure = (failure.stage, failure.reason)
        } catch {
            result.failure = (.dhcp, "\(error)")
        }
        result.ended = clock.now
        return result
    }

    private func run(_ result: inout NodeResult, clock: ContinuousClock) async throws {
        // 1. DHCP, with PXE options, as the ROM does it.
        var start = clock.now
        let lease = try await dhcp(&result)
        result.durations[Stage.dhcp.rawValue] = seconds(clock.now - start)
        let source = settings.bindLeasedAddress ? try SocketAddress(ipAddress: lease.address.description, port: 0) : nil
        let tftpServer = try SocketAddress(ipAddress: lease.tftpServer.description, port: 69)

        // 2. The NBP: the ROM's tsize probe and abort, then the read with blksize; then pxelinux loads ldlinux.c32.
        try checkDeadline(.bootloader)
        start = clock.now
        let probe = await tftp(TFTPFetch(filename: lease.bootFile, mode: .probeSize, maximumRetries: settings.tftpRetries),
                               server: tftpServer, source: source, result: &result)
        guard case .probed(let size) = probe else { throw Failure(stage: .bootloader, reason: "tsize probe of \(lease.bootFile): \(describe(probe))") }
        let loader = await tftp(TFTPFetch(filename: lease.bootFile, mode: .read(blockSize: settings.romBlockSize, askSize: false, keep: false),
                                          maximumRetries: settings.tftpRetries), server: tftpServer, source: source, result: &result)
        guard case .received(let bytes, _) = loader, bytes == size else {
            throw Failure(stage: .bootloader, reason: "\(lease.bootFile): \(describe(loader)) (tsize said \(size))")
        }
        let prefix = lease.bootFile.contains("/") ? String(lease.bootFile[...lease.bootFile.lastIndex(of: "/")!]) : ""
        let ldlinux = await tftp(pxelinuxRead(prefix + "ldlinux.c32", keep: false), server: tftpServer, source: source, result: &result)
        guard case .received = ldlinux else { throw Failure(stage: .bootloader, reason: "\(prefix)ldlinux.c32: \(describe(ldlinux))") }
        result.durations[Stage.bootloader.rawValue] = seconds(clock.now - start)

        // 3. pxelinux's configuration walk: MAC, the hex IP shortened one digit at a time, default.
        try checkDeadline(.config)
        start = clock.now
        var config: [UInt8]?
        let names = pxelinuxLookupOrder(mac: mac, ip: lease.address)
        for name in names {
            let outcome = await tftp(pxelinuxRead(prefix + name, keep: true), server: tftpServer, source: source, result: &result)
            switch outcome {
            case .received(_, let content): config = content
            case .serverError(code: 1, _): continue
            default: throw Failure(stage: .config, reason: "\(prefix)\(name): \(describe(outcome))")
            }
            break
        }
        guard let config else { throw Failure(stage: .config, reason: "no pxelinux.cfg file matched (\(names.count) tried)") }
        guard let entry = PxelinuxEntry(String(decoding: config, as: UTF8.self)) else {
            throw Failure(stage: .config, reason: "the pxelinux config has no KERNEL/INITRD line")
        }
        result.durations[Stage.config.rawValue] = seconds(clock.now - start)

        // 4, 5. Kernel and initramfs, over HTTP (lpxelinux) or TFTP (pxelinux).
        for (stage, path) in [(Stage.kernel, entry.kernel), (.initrd, entry.initrd)] {
            try checkDeadline(stage)
            start = clock.now
            if path.hasPrefix("http://") {
                try await download(path, stage: stage, source: source)
            } else {
                let outcome = await tftp(pxelinuxRead(prefix + path, keep: false), server: tftpServer, source: source, result: &result)
                guard case .received = outcome else { throw Failure(stage: stage, reason: "\(path): \(describe(outcome))") }
            }
            result.durations[stage.rawValue] = seconds(clock.now - start)
        }

        // 6. Stage 1: report, download the image named on the command line, report, "switch root".
        let server = entry.argument("imagebuild.server")
        var eventTime = 0.0
        try await report(.stage1Start, detail: "eth0 \(lease.address) kernel storm", server: server, source: source, time: &eventTime)
        guard let imageURL = entry.argument("imagebuild.image") else {
            throw Failure(stage: .image, reason: "no imagebuild.image= on the kernel command line")
        }
        // Stage 1 fetches its secrets and overlay archives right after its DHCP, in the image's own
        // imagebuild-fetch and before the image: one connection kept alive, from a privileged port when
        // there are secrets (-P).
        let secrets = settings.fetchNodeFiles ? entry.argument("imagebuild.secrets") : nil
        let overlays = settings.fetchNodeFiles ? (entry.argument("imagebuild.overlay")?.split(separator: ",").map(String.init) ?? []) : []
        let nodeFiles = (secrets.map { [$0] } ?? []) + overlays
        try checkDeadline(.image)
        start = clock.now
        var from = source
        if secrets != nil { from = try SocketAddress(ipAddress: source?.ipAddress ?? "0.0.0.0", port: 600 + index % 400) }
        let outcomes = try await download(nodeFiles + [imageURL], stages: nodeFiles.map { _ in .overlay } + [.image], source: from)
        let imageBytes = outcomes.last!.bytes
        var imageStart = start
        if !nodeFiles.isEmpty, let ended = outcomes[nodeFiles.count - 1].ended {
            result.durations[Stage.overlay.rawValue] = seconds(ended - start)
            imageStart = ended
        }
        result.durations[Stage.image.rawValue] = seconds((outcomes.last!.ended ?? clock.now) - imageStart)
        // From here to switch_root stage 1 queues its reports and sends them with switch-root's, in one POST.
        let downloaded = clock.now
        var queued = [QueuedReport(.imageDownloaded, "\(imageBytes) bytes", at: downloaded),
                      QueuedReport(.imageVerified, entry.argument("imagebuild.sha256") ?? "", at: downloaded)]
        // The node's files are laid over the root before switch_root.
        if !nodeFiles.isEmpty {
            queued.append(QueuedReport(.overlay, "\(overlays.count) archives", at: clock.now))
        }
        try await report(.switchRoot, detail: "/sbin/init", after: queued, server: server, source: source, time: &eventTime)
        try await report(.up, detail: "storm node \(index)", server: server, source: source, time: &eventTime)
        if settings.postEvents, server != nil { result.durations[Stage.events.rawValue] = eventTime }
    }

    // MARK: DHCP

    struct Lease {
        var address: IPv4Address
        var tftpServer: IPv4Address
        var bootFile: String
    }

    private func dhcp(_ result: inout NodeResult) async throws -> Lease {
        // Unique per node in the low 28 bits (an odd multiplier is a bijection); the round goes on top:
        // a client back in INIT after a NAK picks a new xid (RFC 2131 §4.4.1), so late OFFERs to the
        // old DISCOVERs cannot be taken for answers to the new one.
        let nodeBits = (UInt32(truncatingIfNeeded: mac.rawValue &* 2_654_435_761) ^ 0x5354_4F52) & 0x0FFF_FFFF
        let started = ContinuousClock.now
        for round in 0..<3 {  // a NAK sends the ROM back to DISCOVER; bounded
            let xid = nodeBits | UInt32(round) << 28
            var secs: UInt16 { UInt16(clamping: Int((ContinuousClock.now - started).components.seconds)) }
            var offer: DHCPMessage?
            for timeout in settings.dhcpTimeouts {
                try checkDeadline(.dhcp)
                offer = await settings.dhcp.exchange(request(.discover, xid: xid, secs: secs), timeout: timeout) { $0.messageType == .offer }
                if offer != nil { break }
                result.dhcpRetries += 1
            }
            guard let offer else { throw Failure(stage: .dhcp, reason: "no OFFER after \(settings.dhcpTimeouts.count) DISCOVERs") }
            guard let serverID = offer.options.serverIdentifier else { throw Failure(stage: .dhcp, reason: "OFFER without server identifier") }
            var ack: DHCPMessage?
            for timeout in settings.dhcpTimeouts {
                try checkDeadline(.dhcp)
                var message = request(.request, xid: xid, secs: secs)
                message.options.set(.requestedIPAddress(offer.yiaddr))
                message.options.set(.serverIdentifier(serverID))
                ack = await settings.dhcp.exchange(message, timeout: timeout) { $0.messageType == .ack || $0.messageType == .nak }
                if ack != nil { break }
                result.dhcpRetries += 1
            }
            guard let ack else { throw Failure(stage: .dhcp, reason: "no ACK after \(settings.dhcpTimeouts.count) REQUESTs") }
            if ack.messageType == .nak { result.dhcpRetries += 1; continue }
            // dnsmasq sends option 67 NUL-terminated; firmware reads it as a C string.
            let file = String((ack.options.bootfileName ?? ack.bootFileName).prefix { $0 != "\0" })
            guard !file.isEmpty else { throw Failure(stage: .dhcp, reason: "ACK without a boot file") }
            let next = ack.siaddr.isAny ? (ack.options.tftpServerName.flatMap { IPv4Address($0) } ?? serverID) : ack.siaddr
            guard !ack.yiaddr.isAny else { throw Failure(stage: .dhcp, reason: "ACK without an address") }
            return Lease(address: ack.yiaddr, tftpServer: next, bootFile: file)
        }
        throw Failure(stage: .dhcp, reason: "NAK three times")
    }

    /// A PXE 2.1 ROM's DISCOVER/REQUEST options (PXE spec §2.2): 53, 57, 55, 97 UUID, 94 UNDI, 93 arch, 60.
    private func request(_ type: DHCPMessageType, xid: UInt32, secs: UInt16) -> DHCPMessage {
        var message = DHCPMessage(op: .bootRequest, xid: xid, chaddr: DHCPHardwareAddress(mac), secs: secs, flags: .broadcast)
        message.options.set(.messageType(type))
        message.options.set(.maximumMessageSize(1464))
        message.options.set(.parameterRequestList([1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51,
                                                   54, 58, 59, 60, 66, 67, 128, 129, 130, 131, 132, 133, 134, 135].map { DHCPOptionCode($0) }))
        var uuid = [UInt8](repeating: 0x53, count: 10)
        for i in 0..<6 { uuid.append(mac[i]) }
        message.options.set(.clientMachineIdentifier(type: 0, identifier: uuid))
        message.options.set(.clientNetworkInterface(type: 1, major: 2, minor: 1))
        message.options.set(.clientSystemArchitecture([settings.architecture]))
        let arch = String(settings.architecture.rawValue)
        let padded = String(repeating: "0", count: max(0, 5 - arch.count)) + arch
        message.options.set(.vendorClassIdentifier(Array("PXEClient:Arch:\(padded):UNDI:002001".utf8)))
        return message
    }

    // MARK: TFTP and HTTP

    private func pxelinuxRead(_ name: String, keep: Bool) -> TFTPFetch {
        TFTPFetch(filename: name, mode: .read(blockSize: settings.pxelinuxBlockSize, askSize: true, keep: keep),
                  maximumRetries: settings.tftpRetries)
    }

    private func tftp(_ fetch: TFTPFetch, server: SocketAddress, source: SocketAddress?, result: inout NodeResult) async -> TFTPFetch.Outcome {
        result.tftpRequests += 1
        return await TFTPClient.fetch(fetch, server: server, source: source, timeout: settings.tftpTimeout, reactor: settings.reactor)
    }

    private func download(_ url: String, stage: Stage, source: SocketAddress?) async throws {
        _ = try await download([url], stages: [stage], source: source)
    }

    /// `urls` in order over one kept-alive connection, each failing as its stage in `stages`; a broken
    /// connection fails as the last one's (the image, when node files come first: most of the bytes).
    private func download(_ urls: [String], stages: [Stage], source: SocketAddress?) async throws -> [HTTPOutcome] {
        let outcomes: [HTTPOutcome]
        do {
            outcomes = try await HTTPClient.fetch(urls, source: source, timeout: settings.httpTimeout, group: settings.group)
        } catch {
            throw Failure(stage: stages.last!, reason: "\(error)")
        }
        for (index, (url, outcome)) in zip(urls, outcomes).enumerated() {
            guard outcome.status == 200 else { throw Failure(stage: stages[index], reason: "\(url): HTTP \(outcome.status)") }
            if let length = outcome.contentLength, length != outcome.bytes {
                throw Failure(stage: stages[index], reason: "\(url): \(outcome.bytes) of \(length) bytes")
            }
        }
        return outcomes
    }

    /// A report stage 1 holds back (`report_later`) until its next one.
    struct QueuedReport {
        var stage: StageReport
        var detail: String
        var at: ContinuousClock.Instant
        init(_ stage: StageReport, _ detail: String, at: ContinuousClock.Instant) { (self.stage, self.detail, self.at) = (stage, detail, at) }
    }

    /// `POST /api/v1/events` as stage 1's `report` does (wget --post-data, JSON body): the `queued`
    /// reports, each with the seconds since it happened, and this one, in one batch.
    private func report(_ stage: StageReport, detail: String, after queued: [QueuedReport] = [], server: String?, source: SocketAddress?,
                        time: inout Double) async throws {
        guard settings.postEvents, let server else { return }
        let start = ContinuousClock.now
        let events = (queued + [QueuedReport(stage, detail, at: start)]).map { report in
            "{\"stage\":\"\(report.stage.rawValue)\",\"detail\":\"\(report.detail)\",\"ago\":\(String(format: "%.2f", seconds(start - report.at)))}"
        }
        let body = "{\"mac\":\"\(mac)\",\"events\":[\(events.joined(separator: ","))]}"
        let outcome: HTTPOutcome
        do {
            outcome = try await HTTPClient.fetch(server + "/api/v1/events", method: .POST, jsonBody: body, source: source,
                                                 timeout: settings.httpTimeout, group: settings.group)
        } catch {
            throw Failure(stage: .events, reason: "\(stage.rawValue): \(error)")
        }
        guard (200..<300).contains(outcome.status) else { throw Failure(stage: .events, reason: "\(stage.rawValue): HTTP \(outcome.status)") }
        time += seconds(ContinuousClock.now - start)
    }

    private func checkDeadline(_ stage: Stage) throws {
        if ContinuousClock.now >= settings.deadline { throw Failure(stage: stage, reason: "wall-clock limit reached") }
    }

    private func describe(_ outcome: TFTPFetch.Outcome) -> String {
        switch outcome {
        case .probed(let size): "only probed (\(size) bytes)"
        case .received(let bytes, _): "\(bytes) bytes"
        case .serverError(let code, let message): "TFTP error \(code) '\(message)'"
        case .failed(let reason): reason
        }
    }
}

func seconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) * 1e-18
}

/// The first boot entry of a pxelinux config: what pxelinux would load.
struct PxelinuxEntry {
    var kernel: String
    var initrd: String
    var append: String

    init?(_ text: String) {
        var kernel: String?
        var initrd: String?
        var append = ""
        for raw in text.split(whereSeparator: \.isNewline) {
            let line = raw.drop { $0 == " " || $0 == "\t" }
            guard let space = line.firstIndex(where: { $0 == " " || $0 == "\t" }) else { continue }
            let key = line[..<space].uppercased()
            let value = line[space...].trimmingCharacters(in: .whitespaces)
            switch key {
            case "KERNEL", "LINUX": if kernel == nil { kernel = value }
            case "INITRD": if initrd == nil { initrd = value }
            case "APPEND": if append.isEmpty { append = value }
            default: break
            }
        }
        guard let kernel, let initrd else { return nil }
        self.kernel = kernel
        self.initrd = initrd
        self.append = append
    }

    /// `name=value` from the APPEND line.
    func argument(_ name: String) -> String? {
        for word in append.split(separator: " ") where word.hasPrefix(name + "=") {
            return String(word.dropFirst(name.count + 1))
        }
        return nil
    }
}
