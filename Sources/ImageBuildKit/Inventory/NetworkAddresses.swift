// MACAddress, IPv4Address, IPv4Network and pxelinuxLookupOrder live in the NetworkAddresses target,
// shared with BootProtocols; every client of ImageBuildKit sees them through this one import.
@_exported import NetworkAddresses
