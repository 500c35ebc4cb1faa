"""Platform plugins: one package per platform, each with a guest half and a host half."""
