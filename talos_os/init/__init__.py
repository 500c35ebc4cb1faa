"""The init (PID 1): takes a node from power-on to a configured, supervised system."""
