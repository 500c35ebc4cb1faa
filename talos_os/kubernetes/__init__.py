"""Kubernetes on the node: the baked payload's versions and the files rendered from the machine config."""
