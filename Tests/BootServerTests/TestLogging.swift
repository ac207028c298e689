import Foundation
import Logging

/// The logger of a server under test, in process: quiet (critical only), since only the command line
/// bootstraps the process's logging and swift-log's default would print every info line into the
/// test output. `IMAGEBUILD_TEST_LOG=1` (or the older `DHCP_TEST_LOG` / `TFTP_TEST_LOG`) turns the
/// servers' debug logs on.
func testLogger(_ label: String) -> Logger {
    var logger = Logger(label: label)
    let environment = ProcessInfo.processInfo.environment
    let verbose = ["IMAGEBUILD_TEST_LOG", "DHCP_TEST_LOG", "TFTP_TEST_LOG"].contains { environment[$0] != nil }
    logger.logLevel = verbose ? .debug : .critical
    return logger
}
