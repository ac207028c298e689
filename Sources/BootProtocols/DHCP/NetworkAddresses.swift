// MACAddress and IPv4Address live in the NetworkAddresses target, shared with ImageBuildKit; every
// client of BootProtocols sees them through this one import.
@_exported import NetworkAddresses
