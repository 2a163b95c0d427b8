"""A local emulator of the Overshoot Streams API (create, get, keepalive, delete).

Serves the contract in docs/overshoot-api (the four stream endpoints under `/v1` and
`/v1beta`) plus an unauthenticated admin surface under `/_emulator/` that tests use to
expire, reap, fake frames, cap streams and inject faults. It talks to no remote service;
with LiveKit settings it only mints real LiveKit room tokens.
"""
