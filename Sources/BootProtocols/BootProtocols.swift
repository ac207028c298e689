// BootProtocols: DHCPv4 and TFTP wire types, codecs and state machines.
// Pure: no sockets, no clocks; time enters as an event (docs/architecture.md).
