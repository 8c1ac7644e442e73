#!/usr/bin/env python3
"""The limit for small answers: a bare aiohttp handler on uvloop, as edgecache runs.

    python3 bench/bare.py --port PORT --body FILE [--access-log FILE] [--tls CERT KEY]

Every GET answers the file's bytes (a manifest) with the headers a registry sends.
No routing table beyond one catch-all, no middleware, no lookups: what the framework and
the loop cost per request, so a ratio to it says how much edgecache adds. With
--access-log, aiohttp's own access logger writes one line per request to the file.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
from pathlib import Path

import uvloop
from aiohttp import web


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--body", type=Path, required=True)
    ap.add_argument("--media-type", default="application/vnd.oci.image.manifest.v1+json")
    ap.add_argument("--access-log", type=Path)
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    args = ap.parse_args()
    body = args.body.read_bytes()
    headers = {"Docker-Distribution-API-Version": "registry/2.0",
               "Docker-Content-Digest": "sha256:" + "0" * 64, "Content-Type": args.media_type}

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    access_log = None
    if args.access_log:
        access_log = logging.getLogger("bare.access")
        access_log.setLevel(logging.INFO)
        access_log.addHandler(logging.FileHandler(args.access_log))
        access_log.propagate = False
    ctx = None
    if args.tls:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(*args.tls)
    uvloop.run(serve(app, args.port, access_log, ctx))   # edgecache's loop, started the same way


async def serve(app: web.Application, port: int, access_log: logging.Logger | None,
                ctx: ssl.SSLContext | None) -> None:
    runner = web.AppRunner(app, access_log=access_log)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024, ssl_context=ctx).start()
    try:
        await asyncio.Event().wait()       # until killed
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    main()
