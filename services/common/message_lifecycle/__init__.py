"""The life of a message (one step of one enrollment, a row of ``messages``), in one place.

* :mod:`.states` — the statuses and the allowed transitions between them, as data, and the retry
  decision (the attempt cap and the backoff). No I/O.
* :mod:`.announcements` — the one id scheme for everything a transition announces (the
  ``email.dispatch`` command, the ``email.event``, the ``email.dead_lettered``) and the builders.
* :mod:`.transitions` — one function per transition, each one guarded SQL statement
  (``WHERE status = ANY(<the transition's sources>)``), plus the dispatcher's one-statement group
  write of outcomes and claims. Every status write to ``messages`` goes through this module.

Who calls what: the scheduler creates messages (``queued``) with their first command; the dispatcher
claims and records outcomes; ``healingwork job retry-failed`` requeues, gives up, republishes and
(opt-in) requeues stuck sends; ``healingwork dlq replay`` replays; deleting a Sequence cancels.
"""
