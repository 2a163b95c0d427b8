"""A local emulator of the Overshoot Streams API (create, get, keepalive, delete).

Serves the Overshoot Streams API contract (the four stream endpoints under `/v1` and
`/v1beta`, plus the v1beta additions: camera sources pulled by the emulator itself, viewer
tokens, regions and rate-limit headers) and an unauthenticated admin surface under
`/_emulator/` that tests use to expire, reap, fake frames, cap streams, inject faults and
move the default region. It talks to no remote service but the camera sources it is asked
to pull; with LiveKit settings it mints real room tokens, its media gateway (gateway.py)
joins each client-published stream's room to count the frames that really arrive, and
pulled cameras are republished into their rooms (republish.py).
"""
