"""The Kubernetes payload: one multi-call binary built from Go modules, and the OCI images around it."""
