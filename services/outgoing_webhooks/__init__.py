"""``healingwork webhooks``: outgoing webhooks, signed per the Standard Webhooks specification.

``fanout`` turns the platform's events into one delivery row per subscribed endpoint, ``delivery``
claims due rows and records each attempt's outcome on a retry schedule kept in PostgreSQL,
``signing`` makes the headers, ``safe_http`` sends (public addresses only, checked at connect time),
``service`` runs the consumer and the delivery loop.
"""
