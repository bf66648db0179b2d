"""One swarm, many views: the swarm service, its client and remote runners."""
