import Foundation
import Testing
@testable import BootServer

/// What `imagebuild reboot --wait` concludes from the server's answers.
@Suite struct RebootWatchTests {
    static func status(_ mac: String, _ stage: BootStage, since: Double, failure: String? = nil, hint: String? = nil) -> NodeStatus {
        NodeStatus(mac: mac, hostname: nil, ip: nil, registered: true, stage: stage, since: since, secondsInStage: nil, lastSeen: since,
                   boot: 1, bootSeconds: nil, bootElapsed: nil, stuck: false, hint: hint, image: nil, failure: failure, lastEvent: nil,
                   lastDHCPStep: nil)
    }

    @Test func onlyWhatFollowsEachNodesPowerCommandCounts() {
        var watch = RebootWatch(nodes: [("a", "52:54:00:00:00:01"), ("b", "52:54:00:00:00:02"), ("c", "52:54:00:00:00:03")], nodeTimeout: 100)
        watch.powered("a", at: 1000)
        watch.powered("b", at: 1002)
        watch.powerFailed("c", "the BMC refused the password")
        // a was up before its power command; b was half-way through an old boot when its command returned.
        var changed = watch.update(NodesResponse(now: 1003, nodes: [Self.status("52:54:00:00:00:01", .up, since: 900),
                                                                    Self.status("52:54:00:00:00:02", .kernel, since: 1001)]))
        #expect(changed.isEmpty && watch.nodes[0].outcome == .waiting && watch.nodes[1].outcome == .waiting)
        changed = watch.update(NodesResponse(now: 1010, nodes: [Self.status("52:54:00:00:00:01", .dhcp, since: 1005),
                                                                Self.status("52:54:00:00:00:02", .initrd, since: 1009)]))
        #expect(changed == [0, 1] && watch.nodes[0].outcome == .booting(.dhcp) && watch.nodes[1].outcome == .booting(.initrd))
        #expect(watch.summary == "1 initrd, 1 dhcp, 1 failed" && !watch.finished)
        watch.update(NodesResponse(now: 1040, nodes: [Self.status("52:54:00:00:00:01", .up, since: 1035),
                                                      Self.status("52:54:00:00:00:02", .failed, since: 1030, failure: "image checksum", hint: "rebuild")]))
        #expect(watch.nodes[0].outcome == .up(seconds: 35) && watch.nodes[1].outcome == .failed("image checksum") && watch.nodes[1].hint == "rebuild")
        #expect(watch.finished && !watch.allUp)
        #expect(RebootWatch.describe(watch.nodes[2].outcome) == "NOT POWERED: the BMC refused the password")
    }

    @Test func aNodeTimesOutAtTheLastStageItReached() {
        var watch = RebootWatch(nodes: [("a", "52:54:00:00:00:01"), ("b", "52:54:00:00:00:02")], nodeTimeout: 60)
        watch.powered("a", at: 1000)
        watch.powered("b", at: 1000)
        watch.update(NodesResponse(now: 1020, nodes: [Self.status("52:54:00:00:00:01", .kernel, since: 1010, hint: "a slow link")]))
        watch.update(NodesResponse(now: 1061, nodes: [Self.status("52:54:00:00:00:01", .kernel, since: 1010, hint: "a slow link")]))
        #expect(watch.nodes[0].outcome == .timedOut(.kernel) && watch.nodes[0].hint == "a slow link")
        #expect(RebootWatch.describe(watch.nodes[1].outcome) == "TIMED OUT with no sign of a boot")
        #expect(watch.finished && watch.summary == "2 timed out")
    }
}
