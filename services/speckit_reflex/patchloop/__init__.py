"""The PatchLoop service."""
