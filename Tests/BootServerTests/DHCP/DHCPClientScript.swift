import Foundation

/// The scripted DHCP client (Python 3, standard library only) the namespace tests run inside the client
/// namespace: a firmware-style PXE exchange next to a proxyDHCP, a bounded DORA load loop, and a check
/// of which address each MAC is offered. Written into the lab by `DHCPLab.with`.
let dhcpClientScript = #"""
#!/usr/bin/python3
# Scripted DHCP client for imagebuild's DHCP server tests. Modes:
#   pxe IFACE MAC                 firmware-style PXE boot next to a proxyDHCP: DISCOVER with 60/93/97,
#                                 REQUEST the address offer, configure it, ask the proxy on 4011
#   load IFACE COUNT SECONDS BASE DORA for COUNT MACs (BASE + i) until SECONDS pass; prints "ACK mac ip"
#   check IFACE MAC...            DISCOVER per MAC; prints "OFFER mac ip" (or "NONE mac")
import json, os, socket, struct, sys, time

SO_BINDTODEVICE = 25


def build(mtype, mac, xid, ciaddr="0.0.0.0", opts=(), broadcast=True):
    pkt = struct.pack("!BBBBIHH4s4s4s4s16s64s128sI", 1, 1, 6, 0, xid, 0, 0x8000 if broadcast else 0,
                      socket.inet_aton(ciaddr), bytes(4), bytes(4), bytes(4), mac + bytes(10), b"", b"", 0x63825363)
    o = bytes([53, 1, mtype])
    for code, data in opts:
        o += bytes([code, len(data)]) + data
    pkt += o + b"\xff"
    return pkt + bytes(max(0, 300 - len(pkt)))


def parse(data):
    if len(data) < 240 or data[0] != 2:
        return None
    opts, i = {}, 240
    while i < len(data):
        c = data[i]
        if c == 255:
            break
        if c == 0:
            i += 1
            continue
        if i + 1 >= len(data):
            break
        n = data[i + 1]
        opts[c] = opts.get(c, b"") + data[i + 2:i + 2 + n]
        i += 2 + n
    return dict(xid=struct.unpack("!I", data[4:8])[0], yiaddr=socket.inet_ntoa(data[16:20]),
                siaddr=socket.inet_ntoa(data[20:24]), chaddr=data[28:34],
                file=data[108:236].split(b"\0")[0].decode(errors="replace"), opts=opts,
                type=opts.get(53, b"\0")[0], server=socket.inet_ntoa(opts[54]) if len(opts.get(54, b"")) == 4 else None)


def sock(iface, port=68):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, iface.encode() + b"\0")
    s.bind(("", port))
    return s


def collect(s, xid, types, seconds, first_only=False):
    out, end = [], time.time() + seconds
    while time.time() < end:
        s.settimeout(max(0.01, end - time.time()))
        try:
            data, _ = s.recvfrom(4096)
        except socket.timeout:
            break
        p = parse(data)
        if p and p["xid"] == xid and p["type"] in types:
            out.append(p)
            if first_only:
                break
    return out


def mac_bytes(text):
    return bytes.fromhex(text.replace(":", "").replace("-", ""))


def mac_text(b):
    return ":".join("%02x" % x for x in b)


PXE = [(60, b"PXEClient:Arch:00000:UNDI:002001"), (93, b"\0\0"), (94, b"\x01\x02\x01"),
       (97, b"\0" + bytes(range(1, 17))), (55, bytes([1, 3, 6, 43, 54, 60, 66, 67, 97]))]


def pxe(iface, mac_s):
    mac, s, result = mac_bytes(mac_s), sock(iface), {}
    xid = int.from_bytes(os.urandom(4), "big")
    offers = []
    for _ in range(3):
        s.sendto(build(1, mac, xid, opts=PXE), ("255.255.255.255", 67))
        offers += collect(s, xid, (2,), 2.0)
        if any(o["yiaddr"] != "0.0.0.0" for o in offers) and any(o["yiaddr"] == "0.0.0.0" for o in offers):
            break
    address = next((o for o in offers if o["yiaddr"] != "0.0.0.0"), None)
    proxy = next((o for o in offers if o["yiaddr"] == "0.0.0.0" and o["opts"].get(60, b"").startswith(b"PXEClient")), None)
    result["offers"] = len(offers)
    if proxy:
        result["proxy_server"] = proxy["server"]
        result["proxy_offer_file"] = proxy["opts"].get(67, b"").decode(errors="replace") or proxy["file"]
        result["proxy_offer_yiaddr"] = proxy["yiaddr"]
    if address:
        result["address"] = address["yiaddr"]
        result["address_server"] = address["server"]
        result["address_offer_file"] = address["opts"].get(67, b"").decode(errors="replace")
        req = [(50, socket.inet_aton(address["yiaddr"])), (54, socket.inet_aton(address["server"]))] + PXE
        s.sendto(build(3, mac, xid, opts=req), ("255.255.255.255", 67))
        acks = collect(s, xid, (5,), 3.0, first_only=True)
        if acks:
            result["acked"] = acks[0]["yiaddr"]
            os.system("ip addr add %s/24 dev %s" % (acks[0]["yiaddr"], iface))
    if proxy and "acked" in result:
        s.close()
        s2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s2.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s2.bind((result["acked"], 68))
        xid2 = xid + 1
        for _ in range(3):
            s2.sendto(build(3, mac, xid2, ciaddr=result["acked"], opts=PXE, broadcast=False), (proxy["server"], 4011))
            acks = collect(s2, xid2, (5,), 1.5, first_only=True)
            if acks:
                result["pxe_ack_file"] = acks[0]["opts"].get(67, b"").decode(errors="replace") or acks[0]["file"]
                result["pxe_ack_server"] = acks[0]["server"]
                break
    print(json.dumps(result), flush=True)


def load(iface, count, seconds, base):
    s, end = sock(iface), time.time() + seconds
    for i in range(count):
        if time.time() > end:
            break
        mac = (base + i).to_bytes(6, "big")
        xid = (base + i) & 0xFFFFFFFF
        offer = None
        for _ in range(2):
            if time.time() > end:
                break
            s.sendto(build(1, mac, xid), ("255.255.255.255", 67))
            got = collect(s, xid, (2,), 0.5, first_only=True)
            if got:
                offer = got[0]
                break
        if not offer:
            print("NOOFFER %s" % mac_text(mac), flush=True)
            continue
        req = [(50, socket.inet_aton(offer["yiaddr"])), (54, socket.inet_aton(offer["server"]))]
        s.sendto(build(3, mac, xid, opts=req), ("255.255.255.255", 67))
        acks = collect(s, xid, (5, 6), 0.5, first_only=True)
        if acks and acks[0]["type"] == 5:
            print("ACK %s %s" % (mac_text(mac), acks[0]["yiaddr"]), flush=True)
        else:
            print("NOACK %s" % mac_text(mac), flush=True)


def check(iface, macs):
    s = sock(iface)
    for text in macs:
        mac = mac_bytes(text)
        xid = int.from_bytes(mac[2:], "big")
        got = []
        for _ in range(3):
            s.sendto(build(1, mac, xid), ("255.255.255.255", 67))
            got = collect(s, xid, (2,), 0.5, first_only=True)
            if got:
                break
        print(("OFFER %s %s" % (text, got[0]["yiaddr"])) if got else ("NONE %s" % text), flush=True)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "pxe":
        pxe(sys.argv[2], sys.argv[3])
    elif mode == "load":
        load(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5], 16))
    elif mode == "check":
        check(sys.argv[2], sys.argv[3:])
"""#
