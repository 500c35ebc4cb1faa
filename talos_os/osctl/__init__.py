"""osctl: the operator's CLI (config management now; node API commands later)."""
