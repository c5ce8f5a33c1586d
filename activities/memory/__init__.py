"""Memory across runs: the fact store (store.py) and what agents do with it (tools.py)."""
