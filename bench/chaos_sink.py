"""The chaos harness's SMTP sink in a process of its own, so the harness's load generator never shares
a GIL with it: ``python -m bench.chaos_sink MAIL_DIR PORT REJECTED_JSON``. It prints ``ready`` once it
listens; each line on stdin is a command: ``fail CODE TEXT`` (every DATA answered so) or ``ok``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from devstack.mailsink import MailSink


def main() -> None:
    mail_dir, port, rejected = Path(sys.argv[1]), int(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text())
    # Offers PIPELINING as a relay or a provider does: the dispatcher's transaction is then two round
    # trips, not four (docs/performance.md, the first email's latency).
    sink = MailSink(mail_dir, port=port, pipelining=True)
    sink.reject_recipients = {address: (550, "5.1.1 chaos: no such user") for address in rejected}
    sink.start()
    print("ready", flush=True)
    try:
        for line in sys.stdin:
            command, _, rest = line.strip().partition(" ")
            if command == "fail":
                code, _, text = rest.partition(" ")
                sink.fail_with = (int(code), text)
            elif command == "ok":
                sink.fail_with = None
            print("done", flush=True)
    finally:
        sink.stop()


if __name__ == "__main__":
    main()
