"""The agents: broker, trader (and, later, oracle and watchtower) at the edges of the pure core."""
