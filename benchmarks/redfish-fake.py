#!/usr/bin/env python3
"""Many Redfish BMCs in one process, for benchmarks/power-scale.sh.

One asyncio HTTPS server on 0.0.0.0:PORT inside the benchmark's own network namespace (only a
loopback there), so every 127.x.y.z address is a BMC of its own, each TLS handshake on the event loop
(sushy-tools' development server does handshakes one at a time in its accept loop, which is what
the functional tests use, not a model of 1,000 independent BMCs). It answers what `power status`
asks: GET /redfish/v1/Systems/<id> with HTTP Basic authentication, PowerState "On". Anything else
is 404; a wrong login is 401. Usage: redfish-fake.py PORT CERT KEY PASSWORD_FILE
"""
import asyncio
import base64
import json
import ssl
import sys


async def handle(reader, writer, expected):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if length:
                await reader.readexactly(length)
            if headers.get("authorization") != expected:
                status, body = "401 Unauthorized", b'{"error": {"message": "unauthorized"}}'
            elif method == "GET" and path.startswith("/redfish/v1/Systems/"):
                system = path.rsplit("/", 1)[1]
                body = json.dumps({"@odata.id": path, "Id": system, "PowerState": "On",
                                   "Actions": {"#ComputerSystem.Reset": {"target": path + "/Actions/ComputerSystem.Reset"}}}).encode()
                status = "200 OK"
            else:
                status, body = "404 Not Found", b'{"error": {"message": "not found"}}'
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, ValueError):
        pass
    finally:
        writer.close()


async def main():
    port, cert, key, password_file = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    with open(password_file) as f:
        password = f.readline().rstrip("\n")
    expected = "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = await asyncio.start_server(lambda r, w: handle(r, w, expected), "0.0.0.0", int(port), ssl=context, backlog=4096)
    async with server:
        await server.serve_forever()


asyncio.run(main())
