"""The Capsule service."""
