#!/usr/bin/env python3
"""A TCP proxy that delays every byte by a fixed time each way: a network's latency, not its
bandwidth (what arrives is forwarded when due, reads go on meanwhile). For benchmarks of a
database on another host where the kernel has no `netem`:

    python3 scripts/latency-proxy.py LISTEN_PORT DELAY_MS [TARGET_PORT]

listens on 127.0.0.1:LISTEN_PORT and forwards to 127.0.0.1:TARGET_PORT (default 5432, the
local PostgreSQL); DELAY_MS each way (0.25 gives a 0.5 ms round trip). TLS passes through.
"""
import asyncio
import sys
import time

if len(sys.argv) < 3:
    sys.exit(__doc__)
LISTEN = int(sys.argv[1])
D = float(sys.argv[2]) / 1000.0
TARGET = int(sys.argv[3]) if len(sys.argv) > 3 else 5432
async def pump(r, w):
    """Copies r to w, each read forwarded D after it arrived."""
    q = asyncio.Queue()
    async def writer():
        while True:
            due, data = await q.get()
            if data is None:
                w.close(); return
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            w.write(data)
            await w.drain()
    t = asyncio.create_task(writer())
    while True:
        data = await r.read(1 << 16)
        await q.put((time.monotonic() + D, data if data else None))
        if not data:
            break
    await t
async def handle(cr, cw):
    sr, sw = await asyncio.open_connection('127.0.0.1', TARGET)
    await asyncio.gather(pump(cr, sw), pump(sr, cw), return_exceptions=True)
async def main():
    srv = await asyncio.start_server(handle, '127.0.0.1', LISTEN)
    async with srv:
        await srv.serve_forever()
asyncio.run(main())
