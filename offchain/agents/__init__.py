"""The agents: broker, trader (and, later, oracle and watchtower) at the edges of the pure core."""

DEFAULT_DISPUTE_AFTER = 600.0
"""Seconds a channel may stay unresponsive before its agent challenges it on-chain (here, not in
fallback.py, so that the command line can show it without importing the chain stack)."""
