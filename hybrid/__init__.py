"""The thin `hybrid` command line: wires broker, policies, edge_agent and gpu_worker together."""
