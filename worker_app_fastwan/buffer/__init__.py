"""Buffer mode: a box of slots (box), each claiming and holding jobs (slot, lifecycle, held, claims), beating
(heartbeat), delivering final statuses (outbox); their metrics and the worker id."""
