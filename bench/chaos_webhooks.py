"""The chaos run's webhook receiver: a real HTTP server (in a thread of the harness) standing in for a
customer's endpoint, recording every request, with a fault hook (answer 503 for a while).

The audit (:func:`audit_webhooks`) checks what it received against PostgreSQL: every accepted lead's
``lead.accepted`` and every sent message's ``email.sent`` arrived, every signature verifies (with the
independent ``standardwebhooks`` package), and copies of one event carry one ``webhook-id``.
"""

from __future__ import annotations

import json
import threading
import urllib.request
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

EVENTS = ["lead.accepted", "email.sent"]


@dataclass
class WebhookSink:
    """Serves on 127.0.0.1 (a free port) once started; ``received`` holds (headers, body) in arrival order."""

    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    failing: threading.Event = field(default_factory=threading.Event)
    url: str = ""
    secret: str = ""
    _server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if len(body) < length:
                    # The sender went away mid-request (a deliverer killed while sending): nothing was
                    # delivered, no answer reached it, and it will try again. Recording the truncated body
                    # would count a bad signature that no receiver ever verifies.
                    self.close_connection = True
                    return
                if sink.failing.is_set():
                    self.send_response(503)
                else:
                    sink.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def register(self, intake_url: str) -> None:
        """Register this sink as an endpoint through the intake API (auth is off in the run)."""
        request = urllib.request.Request(  # noqa: S310 - our own intake
            f"{intake_url}/v1/webhook-endpoints",
            data=json.dumps({"url": self.url, "events": EVENTS, "description": "chaos"}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our own intake
            self.secret = json.loads(response.read())["secret"]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()


def pending_webhooks(conn: psycopg.Connection[Any]) -> int:
    """Deliveries not final, plus events with no delivery at all yet (leads, sent messages)."""
    row = conn.execute(
        """SELECT (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending')
                + (SELECT count(*) FROM leads l WHERE NOT EXISTS (
                       SELECT 1 FROM webhook_deliveries d WHERE d.event_type = 'lead.accepted'
                       AND convert_from(d.body, 'UTF8')::jsonb #>> '{data,lead_id}' = l.id::text))
                + (SELECT count(*) FROM messages m WHERE m.status = 'sent' AND NOT EXISTS (
                       SELECT 1 FROM webhook_deliveries d WHERE d.event_type = 'email.sent'
                       AND convert_from(d.body, 'UTF8')::jsonb #>> '{data,message_id}' = m.id::text))"""
    ).fetchone()
    assert row is not None
    return int(row[0])


def audit_webhooks(sink: WebhookSink, database_url: str, window_message_ids: set[uuid.UUID]) -> dict[str, Any]:
    """The webhook figures of the report (see the module docstring)."""
    verifier = Webhook(sink.secret)
    bad_signatures = 0
    ids_by_subject: dict[tuple[str, str], set[str]] = defaultdict(set)
    copies = 0
    for headers, body in sink.received:
        try:
            payload = verifier.verify(body, headers)
        except WebhookVerificationError:
            bad_signatures += 1
            continue
        key = "lead_id" if payload["type"] == "lead.accepted" else "message_id"
        ids_by_subject[(payload["type"], payload["data"][key])].add(headers["webhook-id"])
        copies += 1
    with psycopg.connect(database_url) as conn:
        leads = {str(row[0]) for row in conn.execute("SELECT id FROM leads")}
        sent = {str(row[0]) for row in conn.execute("SELECT id FROM messages WHERE status = 'sent'")}
        failed = conn.execute("SELECT count(*) FROM webhook_deliveries WHERE status = 'failed'").fetchone()
        disabled = conn.execute("SELECT count(*) FROM webhook_endpoints WHERE status = 'disabled'").fetchone()
    expected = {("lead.accepted", lead) for lead in leads} | {("email.sent", message) for message in sent}
    other_id = sum(
        1
        for (kind, subject), ids in ids_by_subject.items()
        if len(ids) > 1 and not (kind == "email.sent" and uuid.UUID(subject) in window_message_ids)
    )
    return {
        "webhooks_expected": len(expected),
        "webhooks_received": copies,
        "webhooks_lost": len(expected - set(ids_by_subject)),
        "webhooks_duplicate_copies": copies - len(ids_by_subject),
        "webhooks_duplicates_with_another_id": other_id,
        "webhooks_bad_signatures": bad_signatures,
        "webhooks_failed": int(failed[0]) if failed else 0,
        "webhook_endpoints_disabled": int(disabled[0]) if disabled else 0,
    }
