"""The live swarm: runner processes, their supervisor, the coordinator and `Swarm`."""
