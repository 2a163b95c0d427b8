"""The kubectl plugin `kubectl overshoot`: look at OvershootStreams as a fleet operator.

`kubectl overshoot get` prints a table of streams with their media status (phase, who
delivers the video, fps, age of the last frame, region, why not Ready); `kubectl overshoot
snapshot NAME` writes one JPEG of what the stream's room shows right now ("is camera 37
really showing the loading dock?"), with the user's own kubeconfig and RBAC.

Modules, one concern each: `__main__` (arguments, wiring, exit codes), `cluster` (the only
one that uses the kubernetes client), `streams` (a tolerant model of the resource as read),
`table` (pure: rows and text), `snapshot` (the snapshot's flow and messages), `room`
(LiveKit: the first decoded frame), `jpeg` (PyAV's encoder), `deadline` (the `--timeout`
budget) and `errors` (the one error hierarchy and the redactor). Overshoot is reached only
through `overshoot_operator.overshoot`, the project's one Overshoot client.
"""
