"""The chaos harness's SMTP sink in a process of its own, so the harness's load generator never shares
a GIL with it: ``python -m bench.chaos_sink MAIL_FILE PORT REJECTED_JSON``. It prints ``ready`` once it
listens; each line on stdin is a command: ``fail CODE TEXT`` (every DATA answered so) or ``ok``.

The server is :mod:`bench.smtp_sink` appending every message with its receive time to MAIL_FILE (the
audit reads them with :func:`bench.smtp_sink.read_stored`) and refusing the addresses of REJECTED_JSON
at RCPT with 550. It offers PIPELINING as relays and providers do, so the dispatcher's transaction is
two round trips, and it answers a pipelined group in one write: the harness measures the platform, not a
slow sink (docs/performance.md, the first email's latency).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from pathlib import Path

from bench.smtp_sink import SinkRules, serve


def _commands(rules: SinkRules, stop: asyncio.Event, loop: asyncio.AbstractEventLoop) -> None:
    """Apply stdin's commands until it closes, answering each with ``done``; then stop the server."""
    for line in sys.stdin:
        command, _, rest = line.strip().partition(" ")
        if command == "fail":
            code, _, text = rest.partition(" ")
            rules.fail_with = (int(code), text)
        elif command == "ok":
            rules.fail_with = None
        print("done", flush=True)
    loop.call_soon_threadsafe(stop.set)


async def main_async(mail_file: Path, port: int, rejected: list[str]) -> None:
    rules = SinkRules(store_path=mail_file, rejected={address.casefold() for address in rejected})
    started, stop = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(serve(port, rules, started))
    listening = asyncio.create_task(started.wait())
    await asyncio.wait({server, listening}, return_when=asyncio.FIRST_COMPLETED)
    if server.done():
        server.result()  # it could not listen: the harness sees the process exit without "ready"
    print("ready", flush=True)
    threading.Thread(target=_commands, args=(rules, stop, asyncio.get_running_loop()), daemon=True).start()
    await stop.wait()
    server.cancel()
    rules.close()


def main() -> None:
    mail_file, port, rejected = Path(sys.argv[1]), int(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text())
    asyncio.run(main_async(mail_file, port, rejected))


if __name__ == "__main__":
    main()
