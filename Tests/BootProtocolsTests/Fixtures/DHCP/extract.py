#!/usr/bin/env python3
"""Writes one .hex fixture per manifest line: the UDP payload (the DHCP message) of packet N of a pcap.

Usage: extract.py  (run in this directory; reads manifest.txt, writes NAME.hex)
manifest.txt lines: NAME PCAP INDEX(0-based) [description...]
"""
import struct

def packets(path):
    with open(path, 'rb') as f:
        data = f.read()
    magic = struct.unpack('<I', data[:4])[0]
    endian = '<' if magic in (0xa1b2c3d4, 0xa1b23c4d) else '>'
    linktype = struct.unpack(endian + 'I', data[20:24])[0]
    assert linktype == 1, 'expected Ethernet captures'
    off = 24
    while off + 16 <= len(data):
        _, _, incl, _ = struct.unpack(endian + 'IIII', data[off:off + 16])
        frame = data[off + 16:off + 16 + incl]
        off += 16 + incl
        assert frame[12:14] == b'\x08\x00', 'not IPv4'
        ihl = (frame[14] & 0x0f) * 4
        assert frame[14 + 9] == 17, 'not UDP'
        udp = frame[14 + ihl:]
        length = struct.unpack('>H', udp[4:6])[0]
        yield udp[8:length]

for line in open('manifest.txt'):
    line = line.strip()
    if not line or line.startswith('#'):
        continue
    name, pcap, index, *desc = line.split()
    payload = list(packets('pcap/' + pcap))[int(index)]
    with open(name + '.hex', 'w') as out:
        out.write('# %s (packet %s of pcap/%s, %d bytes)\n' % (' '.join(desc), index, pcap, len(payload)))
        for i in range(0, len(payload), 16):
            out.write(' '.join('%02x' % b for b in payload[i:i + 16]) + '\n')
