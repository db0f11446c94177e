"""The Inference service."""
