"""The local stack: real Kubernetes control plane, emulator, LiveKit server and the helpers
that build and run them on a machine without Docker (tests, benchmarks and `make demo`)."""
