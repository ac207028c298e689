import BootProtocols
import Foundation
import NIOCore
import NIOPosix

/// An interface the server answers on, with its IPv4 addresses.
struct DHCPInterface: Sendable, Hashable {
    var name: String
    var index: Int
    var addresses: [IPv4Address]

    /// The address that names the subnet: one inside a declared subnet when there is one.
    func address(in subnets: [DHCPSubnet]) -> IPv4Address? {
        addresses.first { a in subnets.contains { $0.contains(a) } } ?? addresses.first
    }

    /// Every interface with its IPv4 addresses (getifaddrs).
    static func all() throws -> [DHCPInterface] {
        var byName: [String: DHCPInterface] = [:]
        var order: [String] = []
        for device in try System.enumerateDevices() {
            var entry = byName[device.name] ?? DHCPInterface(name: device.name, index: device.interfaceIndex, addresses: [])
            if case .v4(let v4) = device.address {
                entry.addresses.append(IPv4Address(rawValue: UInt32(bigEndian: v4.address.sin_addr.s_addr)))
            }
            if byName[device.name] == nil { order.append(device.name) }
            byName[device.name] = entry
        }
        return order.compactMap { byName[$0] }
    }
}

/// Socket set-up the bootstraps cannot express: SO_BINDTODEVICE takes a name, and it must be set
/// before bind so the socket never sees another interface's packets.
enum DHCPSocket {
    static func open(port: Int, interface: String?, receiveBufferSize: Int, packetInfo: Bool) throws -> NIOBSDSocket.Handle {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw DHCPServerError.socket("socket", interface: interface, port: port, errno: errno) }
        func fail(_ operation: String) -> DHCPServerError {
            let code = errno
            close(fd)
            return .socket(operation, interface: interface, port: port, errno: code)
        }
        var one: Int32 = 1
        let intSize = socklen_t(MemoryLayout<Int32>.size)
        // REUSEADDR lets per-interface sockets share the port (and another DHCP server bound to other
        // devices, as dnsmasq does); BROADCAST is needed to send to 255.255.255.255.
        guard setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, intSize) == 0 else { throw fail("SO_REUSEADDR") }
        guard setsockopt(fd, SOL_SOCKET, SO_BROADCAST, &one, intSize) == 0 else { throw fail("SO_BROADCAST") }
        var buffer = Int32(clamping: receiveBufferSize)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer, intSize)  // capped by rmem_max; not fatal
        if packetInfo {
            guard setsockopt(fd, Int32(IPPROTO_IP), IP_PKTINFO, &one, intSize) == 0 else { throw fail("IP_PKTINFO") }
        }
        if let interface {
            let ok = interface.withCString { name in
                setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, name, socklen_t(strlen(name) + 1)) == 0
            }
            guard ok else { throw fail("SO_BINDTODEVICE") }
        }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = 0  // INADDR_ANY: broadcasts to 255.255.255.255 reach only wildcard sockets
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else { throw fail("bind") }
        return fd
    }

    /// The port a socket is bound to (for port 0 in tests).
    static func boundPort(_ fd: NIOBSDSocket.Handle) -> Int {
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) == 0 }
        }
        return ok ? Int(UInt16(bigEndian: address.sin_port)) : 0
    }
}

/// Adds ARP entries so a reply can be unicast to a client that has no address yet (its yiaddr is
/// not configured, so it would never answer the kernel's ARP request). One helper socket carries the ioctls.
final class ARPInjector {
    private let fd: Int32

    init?() {
        fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { return nil }
    }

    deinit { close(fd) }

    /// ioctl SIOCSARP with a completed entry (ATF_COM, not permanent: it ages out like a learned one).
    /// Returns errno, 0 on success.
    func set(_ address: IPv4Address, _ mac: MACAddress, interface: String) -> Int32 {
        // struct arpreq { sockaddr arp_pa; sockaddr arp_ha; int arp_flags; sockaddr arp_netmask; char arp_dev[16]; }
        var request = [UInt8](repeating: 0, count: 68)
        request[0] = UInt8(AF_INET & 0xFF)  // sa_family, little-endian u16
        let ip = address.rawValue
        request[4] = UInt8(ip >> 24); request[5] = UInt8((ip >> 16) & 0xFF)
        request[6] = UInt8((ip >> 8) & 0xFF); request[7] = UInt8(ip & 0xFF)
        request[16] = 1  // ARPHRD_ETHER
        for i in 0..<6 { request[18 + i] = mac[i] }
        request[32] = 0x02  // ATF_COM
        let name = Array(interface.utf8.prefix(15))
        for (i, b) in name.enumerated() { request[52 + i] = b }
        let result = request.withUnsafeMutableBytes { ioctl(fd, 0x8955 /* SIOCSARP */, $0.baseAddress!) }
        return result == 0 ? 0 : errno
    }
}
