"""Typed clients for the speckit-reflex services. The CLI and the services
talk to each other only through these."""
