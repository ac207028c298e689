import Foundation
import NIOCore

/// Start-up problems phrased for the administrator who runs `imagebuild serve`.
public struct StartupError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }

    /// Turns what a service's `bind()` threw into what to do about it: every service's bind failure
    /// goes through here (`BootServices.bind`), so a busy port reads the same for DHCP, TFTP and HTTP.
    public static func bind(_ error: Error, service: String, host: String, port: Int, flag: String) -> StartupError {
        let (code, errorPort) = socketError(error)
        // A port other than the service's own (proxyDHCP's 4011) is fixed by the protocol: no flag moves it.
        let movable = errorPort == nil || errorPort == port
        let port = errorPort ?? port
        let place = "\(service): cannot listen on \(host):\(port)"
        switch code {
        case EADDRINUSE:
            guard movable else {
                return StartupError("\(place): the port is in use, and PXE clients always ask port \(port): stop the other "
                                    + "proxyDHCP server there (e.g. dnsmasq with a 'proxy' dhcp-range). See who: ss -lunp 'sport = :\(port)'")
            }
            let others = ["DHCP": "dnsmasq or dhcpd", "TFTP": "in.tftpd or dnsmasq", "HTTP": "nginx"][service].map { ", e.g. \($0)" } ?? ""
            return StartupError("\(place): the port is in use (another \(service) server\(others)?). "
                                + "See who: ss -lunpt 'sport = :\(port)'; or choose another port with \(flag)")
        case EACCES:
            guard movable else {
                return StartupError("\(place): ports below 1024 need privileges. Run as root, or grant them once with "
                                    + "'setcap cap_net_bind_service=+ep \(CommandLine.arguments[0])'")
            }
            return StartupError("\(place): ports below 1024 need privileges. Run as root, or grant them once with "
                                + "'setcap cap_net_bind_service=+ep \(CommandLine.arguments[0])', or use \(flag) with a port above 1023")
        case EADDRNOTAVAIL:
            return StartupError("\(place): no interface has the address \(host) (check --listen)")
        case .some:
            return StartupError("\(place): \(error)")
        case nil:
            return StartupError("\(service): \(error)")  // not a socket's failure: a missing root, the lease journal, ...
        }
    }

    /// The errno of a failed socket call, and the port it was for when the error says (DHCP's proxy
    /// port); nil for errors that are not a socket's.
    private static func socketError(_ error: Error) -> (Int32?, port: Int?) {
        switch error {
        case let error as IOError: (error.errnoCode, nil)
        case is NIOCore.SocketAddressError: (EADDRNOTAVAIL, nil)
        case DHCPServerError.socket(_, _, let port, let code): (code, port)
        case DHCPServerError.noInterfaceHolds: (EADDRNOTAVAIL, nil)
        default: (nil, nil)
        }
    }
}
