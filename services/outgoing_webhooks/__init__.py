"""``healingwork webhooks``: outgoing webhooks, signed per the Standard Webhooks specification.

``fanout`` turns the platform's events into one delivery row per subscribed endpoint (``reconcile``
does it again from the outbox, for events a broker lost), ``delivery`` claims due rows and records each
attempt's outcome on a retry schedule kept in PostgreSQL, ``deliverer`` runs one pass of attempts,
``signing`` makes the headers, ``safe_http`` sends (public addresses only, checked at connect time),
``service`` (the edge) runs the consumer, the deliverer and the reconcile pass.
"""
