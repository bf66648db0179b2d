"""Where a swarm's history lives: the database address, the store, ownership and export."""
