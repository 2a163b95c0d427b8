"""The OvershootStream operator: kopf handlers that turn OvershootStream resources into
live Overshoot streams with a publisher Pod each, keep them alive, and report the truth in
status.

Modules, one concern each: `resource` (the CRD's models, names and defaults), `settings`
(one typed settings object), the Overshoot client, the pure decision and scheduling
functions, the manifest builders, the one module that talks to Kubernetes, and the thin
handlers that wire them together. See deploy/crds/ for the schema the API server enforces.
"""
