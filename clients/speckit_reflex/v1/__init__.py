"""Generated gRPC code for the speckit_reflex.v1 contracts (see protos/). Do not edit."""
