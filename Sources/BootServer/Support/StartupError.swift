import Foundation
import NIOCore

/// Start-up problems phrased for the administrator who runs `imagebuild serve`.
public struct StartupError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }

    /// Turns a bind failure into what to do about it.
    public static func bind(_ error: Error, service: String, host: String, port: Int, flag: String) -> StartupError {
        let code = (error as? IOError)?.errnoCode ?? (error as? NIOCore.SocketAddressError).map { _ in EADDRNOTAVAIL }
        let place = "\(service): cannot listen on \(host):\(port)"
        switch code {
        case EADDRINUSE:
            return StartupError("\(place): the port is in use (another \(service) server, e.g. dnsmasq or in.tftpd?). "
                                + "See who: ss -lunpt 'sport = :\(port)'; or choose another port with \(flag)")
        case EACCES:
            return StartupError("\(place): ports below 1024 need privileges. Run as root, or grant them once with "
                                + "'setcap cap_net_bind_service=+ep \(CommandLine.arguments[0])', or use \(flag) with a port above 1023")
        case EADDRNOTAVAIL:
            return StartupError("\(place): no interface has the address \(host) (check --listen)")
        default:
            return StartupError("\(place): \(error)")
        }
    }
}
