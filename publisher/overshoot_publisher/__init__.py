"""The publisher: pulls one video source and publishes it into a stream's LiveKit room.

Modules: `config` (the env contract with the operator), `mounted` (Secret files),
`sources` (PyAV), `h264` (bitstream helpers), `pacing` (deadline clock, fps cap),
`media` (passthrough/transcode loop), `session` (LiveKit), `metrics` and `health`
(HTTP endpoints), `app` (`run()`), `__main__` (console script).
"""
