import BootServer
import Foundation
import ImageBuildKit
import Testing

/// One list of report names (`StageReport`, next to the stage-1 scripts) and three parties that
/// must agree on it: the stage-1 scripts that post them, the server that maps them to boot stages
/// (`NodeReport` is `StageReport`), and the boot-storm simulator that imitates a node.
@Suite("Stage report names: scripts, server and simulator agree")
struct StageReportContractTests {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../..").standardized.path

    /// `report NAME ...` and `report_later NAME ...` commands of the built-in `/init` and `/load_img.sh`, as the binary carries them.
    static func scriptReports() -> [String] {
        (StageOneScripts.initScript + "\n" + StageOneScripts.loadImageScript)
            .split(separator: "\n")
            .map { $0.trimmingCharacters(in: .whitespaces) }
            // `report NAME` sends at once; `report_later NAME` goes with the next report (not the
            // functions' own `report_later "$1"`)
            .compactMap { line in line.prefixMatch(of: /report(?:_later)? ([a-z0-9-]+)(?:\s|$)/).map { String($0.1) } }
    }

    @Test("every name stage 1 reports is a StageReport, and stage 1 reports all but stage 2's")
    func scriptsMatchTheList() {
        let reported = Self.scriptReports()
        #expect(reported.count >= 5, "found only \(reported) in the scripts: did the report function change shape?")
        let unknown = reported.filter { StageReport(rawValue: $0) == nil }
        #expect(unknown.isEmpty, "stage 1 reports \(unknown), which the server refuses (known: \(StageReport.allCases.map(\.rawValue)))")
        let expected = Set(StageReport.allCases.filter { !$0.isStageTwo }.map(\.rawValue))
        #expect(Set(reported) == expected, "stage 1 reports \(Set(reported).sorted()), the list says \(expected.sorted())")
    }

    @Test("stage 2's report comes from the recipes' own init")
    func stageTwoReportsUp() throws {
        for name in StageReport.allCases.filter(\.isStageTwo).map(\.rawValue) {
            for recipe in ["minimal.yaml", "debian-compute.yaml"] {
                let text = try String(contentsOfFile: Self.packageRoot + "/recipes/" + recipe, encoding: .utf8)
                #expect(text.contains(#"\"stage\":\"\#(name)\""#), "recipes/\(recipe) does not report '\(name)'")
            }
        }
    }

    @Test("the server accepts every name and maps the reports onto the stages only a node can tell")
    func serverMapsEveryReport() {
        #expect(NodeReport.self == StageReport.self)
        for report in StageReport.allCases { #expect(NodeReport(rawValue: report.rawValue)?.stage == report.stage) }
        #expect(Set(NodeReport.allCases.map(\.stage)) == [.stage1, .image, .overlay, .switchRoot, .up, .failed])
        // A report only moves a node forward through a boot (or to failed).
        let order = StageReport.allCases.filter { $0 != .failed }.map(\.stage)
        #expect(order == order.sorted(), "\(order)")
    }

    @Test("the simulator posts StageReport values, every one a healthy boot sends (conditional ones aside), in order")
    func simulatorUsesTheList() throws {
        let folder = Self.packageRoot + "/Sources/BootStorm"
        var sent: [String] = []
        for file in try FileManager.default.contentsOfDirectory(atPath: folder).sorted() where file.hasSuffix(".swift") {
            let text = try String(contentsOfFile: folder + "/" + file, encoding: .utf8)
            // Where the simulator posts events, no name is spelled out (a table header "failed" elsewhere is no report).
            if text.contains("/api/v1/events") {
                for name in StageReport.allCases.map(\.rawValue) {
                    let spelled = text.contains("\"\(name)\"")
                    #expect(!spelled, "Sources/BootStorm/\(file) spells the report '\(name)' as a string: use StageReport")
                }
            }
            // sent at once (`report(.x, ...)`) or held back for the next one (`QueuedReport(.x, ...)`)
            for match in text.matches(of: /(?:report|QueuedReport)\(\.(\w+),/) { sent.append(String(match.1)) }
        }
        // Every report a healthy boot sends, in order; the conditional ones (overlay) only when the node
        // has files, which the simulator fetches and reports as stage 1 does.
        let healthy = StageReport.allCases.filter { $0 != .failed }.map { "\($0)" }
        #expect(sent == healthy, "the simulator reports \(sent)")
    }
}
