import BootProtocols

extension BootTimeline {
    /// Records what the DHCP server saw and did for one packet: the client's
    /// message, then our reply (an ACK also teaches the timeline which MAC owns
    /// the address, so later TFTP and HTTP requests are attributed to the node).
    public func record(_ event: DHCPEvent) {
        guard let mac = event.mac else { return }
        if let step = Self.step(received: event.messageType) {
            if case .ignored(let reason) = event.outcome {
                record(.dhcp(.ignored, address: nil, detail: "\(step.rawValue): \(reason)"), mac: mac)
                return
            }
            record(.dhcp(step, address: step == .request ? event.address : nil, detail: nil), mac: mac)
        }
        if case .replied(let type, _) = event.outcome {
            switch type {
            case .offer: record(.dhcp(.offer, address: event.address, detail: nil), mac: mac)
            case .ack:
                record(.dhcp(.ack, address: event.address, detail: nil), mac: mac)
                if let address = event.address, !address.isAny { learn(ip: address, mac: mac) }
            case .nak: record(.dhcp(.nak, address: event.address, detail: nil), mac: mac)
            default: break
            }
        }
    }

    static func step(received type: DHCPMessageType?) -> DHCPStep? {
        switch type {
        case .discover?: .discover
        case .request?: .request
        case .decline?: .decline
        case .release?: .release
        case .inform?: .inform
        default: nil
        }
    }
}
