"""The Router service."""
