import ArgumentParser
import BootProtocols
import DatagramIO
import Foundation
import NIOCore
import NIOPosix

@main
struct StormCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "imagebuild-storm",
        abstract: "Boot-storm simulator: N simulated PXE nodes boot against a DHCP + TFTP + HTTP server.",
        discussion: """
            Each node has its own MAC and does, in order, what firmware, pxelinux and stage 1 do \
            on the wire:

            dhcp: DISCOVER and REQUEST from port 68 to 255.255.255.255:67 with the broadcast flag \
            and options 53, 57, 55, 60 (PXEClient), 93 (architecture), 94 (UNDI), 97 (UUID); \
            time-outs 4, 8, 16, 32 s like a PXE ROM; a NAK restarts DISCOVER with a new xid.

            tftp bootloader: the boot file with the ROM's RRQ tsize=0, OACK, ERROR 8 abort, then \
            RRQ blksize; then ldlinux.c32 next to it (RRQ tsize=0 blksize=1408, as pxelinux asks).

            config walk: pxelinux.cfg/01-<mac>, the 8 hex-IP prefixes, default; the first found wins.

            kernel, initrd: KERNEL and INITRD of that config, by HTTP GET (lpxelinux) or TFTP (pxelinux).

            image: imagebuild.image= of its APPEND line, by HTTP GET.

            stage events: POST imagebuild.server=/api/v1/events with stage1-start, \
            image-downloaded, image-verified, switch-root, up (skipped with --no-events).

            After DHCP, TFTP and HTTP sockets are bound to the node's leased address, so per-client \
            limits on the server see one client per node. That needs the leased addresses to be \
            local in the simulator's network namespace (e.g. ip route add local POOL dev lo); \
            --no-bind-leased uses the namespace's own address instead.

            Run it only inside a network namespace of your own, against a server in it or joined \
            to it by a veth pair: it broadcasts DHCP. benchmarks/boot-storm.sh does all of that.

            Prints nodes booted, failures by stage (with the commonest reasons), p50/p99 per \
            stage, total, nodes per minute and the simulator's own CPU time; the last line is \
            machine-readable (RESULT ...).
            """)

    @Option(help: "Simulated nodes.")
    var nodes: Int = 1000

    @Option(help: "Nodes booting at once at most.")
    var concurrency: Int = 500

    @Option(help: "New nodes per second at most (0: as fast as the concurrency cap lets them start).")
    var rate: Double = 500

    @Option(help: "Stop starting nodes after this many seconds; nodes still running fail at their next step.")
    var timeLimit: Double = 1800

    @Option(help: "A label for the report (the server's name).")
    var label: String = "server"

    @Option(help: "First MAC; node i gets this plus i.")
    var firstMac: String = "02:53:54:00:00:00"

    @Option(help: "DHCP time-outs in seconds, one per attempt (a PXE ROM: 4,8,16,32).")
    var dhcpTimeouts: String = "4,8,16,32"

    @Option(help: "TFTP time-out in seconds before the first re-send (doubles per re-send).")
    var tftpTimeout: Double = 1

    @Option(help: "TFTP re-sends of one packet before the read fails.")
    var tftpRetries: Int = 5

    @Option(help: "HTTP time-out per request in seconds (connect to last byte).")
    var httpTimeout: Double = 120

    @Option(help: "blksize of the ROM's RRQ for the boot file.")
    var romBlksize: Int = 1456

    @Option(help: "blksize of pxelinux's RRQs (ldlinux.c32, configs).")
    var pxelinuxBlksize: Int = 1408

    @Option(help: "Client architecture (option 93): 0 BIOS, 7 x64 UEFI ...")
    var arch: UInt16 = 0

    @Option(help: "DHCP client port (68 is what firmware uses).")
    var dhcpClientPort: Int = 68

    @Option(help: "DHCP server port.")
    var dhcpServerPort: Int = 67

    @Option(help: "Event loop threads.")
    var threads: Int = 1

    @Flag(inversion: .prefixedNo, help: "POST the stage events (a plain web server such as nginx cannot take them).")
    var events = true

    @Flag(inversion: .prefixedNo, help: "Bind TFTP and HTTP sockets to the node's leased address.")
    var bindLeased = true

    @Flag(inversion: .prefixedNo, help: "Fetch each node's secrets (from a port below 1024) and overlay archives when its command line names them, as stage 1 does.")
    var nodeFiles = true

    func validate() throws {
        guard nodes > 0, concurrency > 0 else { throw ValidationError("--nodes and --concurrency must be positive") }
        guard rate >= 0, timeLimit > 0 else { throw ValidationError("--rate must be >= 0 and --time-limit > 0") }
        guard MACAddress(firstMac) != nil else { throw ValidationError("--first-mac '\(firstMac)' is not a MAC address") }
        guard !parsedDHCPTimeouts.isEmpty else { throw ValidationError("--dhcp-timeouts: give seconds like 4,8,16,32") }
        guard (8...65464).contains(romBlksize), (8...65464).contains(pxelinuxBlksize) else {
            throw ValidationError("block sizes must be 8...65464 (RFC 2348)")
        }
    }

    var parsedDHCPTimeouts: [TimeAmount] {
        dhcpTimeouts.split(separator: ",").compactMap { Double($0.trimmingCharacters(in: .whitespaces)) }
            .filter { $0 > 0 }.map { .nanoseconds(Int64($0 * 1e9)) }
    }

    func run() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, threads))
        let dhcp: DHCPPort
        do {
            dhcp = try await DHCPPort.open(group: group, port: dhcpClientPort, serverPort: dhcpServerPort)
        } catch {
            throw ValidationError("cannot bind the DHCP client port \(dhcpClientPort): \(error) (root and a namespace of your own are needed)")
        }
        let reactor = try DatagramReactor(name: "storm-tftp")
        defer { reactor.shutdown() }
        let clock = ContinuousClock()
        let begin = clock.now
        let settings = StormSettings(
            group: group, reactor: reactor, dhcp: dhcp, dhcpTimeouts: parsedDHCPTimeouts,
            tftpTimeout: .nanoseconds(Int64(tftpTimeout * 1e9)), tftpRetries: tftpRetries,
            httpTimeout: .nanoseconds(Int64(httpTimeout * 1e9)), romBlockSize: romBlksize,
            pxelinuxBlockSize: pxelinuxBlksize, postEvents: events, fetchNodeFiles: nodeFiles, bindLeasedAddress: bindLeased,
            architecture: DHCPClientArchitecture(arch), deadline: begin + .milliseconds(Int64(timeLimit * 1000)))
        let base = MACAddress(firstMac)!
        let total = nodes
        let cap = concurrency
        let interval = rate > 0 ? 1.0 / rate : 0

        var executors: [EventLoopExecutor] = []
        for loop in group.makeIterator() { executors.append(EventLoopExecutor(loop)) }
        var results: [NodeResult] = []
        results.reserveCapacity(total)
        var started = 0
        await withTaskGroup(of: NodeResult.self) { tasks in
            while started < total {
                if clock.now >= settings.deadline { break }
                while started - results.count >= cap, let result = await tasks.next() { results.append(result) }
                if interval > 0 {
                    let due = begin + .nanoseconds(Int64(Double(started) * interval * 1e9))
                    if due > clock.now { try? await clock.sleep(until: due) }
                }
                let node = SimulatedNode(index: started, mac: MACAddress(rawValue: base.rawValue &+ UInt64(started)), settings: settings)
                tasks.addTask(executorPreference: executors[started % executors.count]) { await node.boot() }
                started += 1
                if started % 1000 == 0 {
                    FileHandle.standardError.write(Data("[\(label)] started \(started)/\(total), finished \(results.count), \(String(format: "%.1f", seconds(clock.now - begin))) s\n".utf8))
                }
            }
            for await result in tasks { results.append(result) }
        }
        let wall = seconds(clock.now - begin)
        await dhcp.close()
        try? await group.shutdownGracefully()

        let report = StormReport(label: label, requested: total, results: results, wall: wall, eventsPosted: events)
        print(report.render(concurrency: cap, rate: rate), terminator: "")
        // If the simulator used its whole CPU, the numbers measure it, not the server: say how busy it was.
        var usage = rusage()
        getrusage(0, &usage)  // RUSAGE_SELF
        let cpu = Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
        print("simulator CPU: \(String(format: "%.1f", cpu)) s over \(String(format: "%.1f", wall)) s wall")
    }
}
