"""The pure core: the channel state machine, the order rules and the batch auction (no I/O)."""
