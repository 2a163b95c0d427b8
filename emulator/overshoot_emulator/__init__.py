"""A local emulator of the Overshoot Streams API (create, get, keepalive, delete).

Serves the Overshoot Streams API contract (the four stream endpoints under `/v1` and
`/v1beta`) plus an unauthenticated admin surface under `/_emulator/` that tests use to
expire, reap, fake frames, cap streams and inject faults. It talks to no remote service;
with LiveKit settings it mints real room tokens and its media gateway (gateway.py) joins
each stream's room to count the frames that really arrive.
"""
