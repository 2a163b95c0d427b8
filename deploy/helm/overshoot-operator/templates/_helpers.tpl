{{/* The chart name, or nameOverride. */}}
{{- define "overshoot-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object's name: fullnameOverride, else the release name when it already
contains the chart name, else `<release>-<chart>`. 63 characters: the DNS label limit.
*/}}
{{- define "overshoot-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "overshoot-operator.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "overshoot-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "overshoot-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "overshoot-operator.labels" -}}
{{ include "overshoot-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | toString | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "overshoot-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "overshoot-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "overshoot-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{- define "overshoot-operator.publisherImage" -}}
{{- $repository := .Values.publisher.image.repository | default .Values.image.repository }}
{{- $tag := .Values.publisher.image.tag | default .Values.image.tag | default .Chart.AppVersion | toString }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}

{{/*
The leader Lease's name (in the release namespace): the release's full name, so two
releases in one namespace never compete for one Lease.
*/}}
{{- define "overshoot-operator.leaseName" -}}
{{- include "overshoot-operator.fullname" . }}
{{- end }}

{{/*
Refuses values without the keys newer charts added: `helm upgrade --reuse-values` from an
older chart (0.1.x lacks leaderElection and kubeRequestTimeoutSeconds, 0.2.x networkPolicy)
keeps that chart's values, which would otherwise fail on a nil pointer or render an empty
setting. Every template that reads one of these keys includes this first.
*/}}
{{- define "overshoot-operator.checkNewKeys" -}}
{{- range list "leaderElection" "kubeRequestTimeoutSeconds" "networkPolicy" }}
{{- if not (hasKey $.Values .) }}
{{- fail (printf "%s is missing from the values: `helm upgrade --reuse-values` keeps the values of the release's old chart, without this chart's new defaults; upgrade with --reset-then-reuse-values (Helm 3.14 or newer) instead" .) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Refuses leader-election timing the operator would refuse at startup (leader.py's Timing),
so the mistake fails `helm install` instead of crash-looping every replica. The order is
client-go's: the leader stops acting (renew deadline) before a standby may take the Lease
(lease duration), and renews more often than that deadline. The schema checks each value's
range; only a template can compare them. float64: `--set` gives integers and values.yaml
floats, which Go templates refuse to compare with each other.
*/}}
{{- define "overshoot-operator.checkLeaderElection" -}}
{{- include "overshoot-operator.checkNewKeys" . }}
{{- with .Values.leaderElection }}
{{- $lease := .leaseDurationSeconds | float64 }}
{{- $renew := .renewDeadlineSeconds | float64 }}
{{- $retry := .retryPeriodSeconds | float64 }}
{{- if not (and (gt $lease $renew) (gt $renew $retry) (gt $retry 0.0)) }}
{{- fail (printf "leaderElection: needs leaseDurationSeconds > renewDeadlineSeconds > retryPeriodSeconds > 0 (the leader must stop acting before a standby may take over), got %v, %v, %v" .leaseDurationSeconds .renewDeadlineSeconds .retryPeriodSeconds) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Refuses namespace patterns: the operator watches namespaces by exact name (kopf's namespace
scanning is off, see operator/overshoot_operator/handlers.py), and kopf silently drops a
pattern from such a list, so `cameras-*` would serve nothing and say nothing.
*/}}
{{- define "overshoot-operator.checkWatchNamespaces" -}}
{{- range .Values.watchNamespaces }}
{{- if or (contains "*" .) (contains "?" .) (hasPrefix "!" .) }}
{{- fail (printf "watchNamespaces: %q is a pattern, but the operator watches namespaces by exact name (a pattern would match nothing); list each namespace" .) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The metadata lines the generated CRD templates (templates/crds/) add under `metadata:`.
Deleting the CRD deletes every OvershootStream, so with crds.keep neither tool that may
apply this chart deletes it when it stops being rendered; each reads only its own mark:
- helm.sh/resource-policy: keep -- Helm (`helm uninstall`; `helm upgrade` with
  crds.install: false; Flux's helm-controller, which runs Helm). Argo CD does not read it
  when it prunes.
- argocd.argoproj.io/sync-options: Prune=false -- Argo CD's prune on sync (automated
  `prune: true`, or `argocd app sync --prune`), checked on the live CRD (gitops-engine's
  pruneObject). Argo CD never deletes a CRD when an Application is deleted anyway.
*/}}
{{- define "overshoot-operator.crdMetadata" -}}
labels:
  {{- include "overshoot-operator.labels" . | nindent 2 }}
{{- if .Values.crds.keep }}
annotations:
  # Uninstalling (or `crds.install: false`) must not delete the CRD and every stream with
  # it: Helm honours the first annotation, Argo CD's pruning only the second.
  helm.sh/resource-policy: keep
  argocd.argoproj.io/sync-options: Prune=false
{{- end }}
{{- end }}

{{/*
The TCP port of apiUrl: the one written in it, else 443 (https) or 80 (http). The operator's
NetworkPolicy allows egress to it (the address is not known: a NetworkPolicy cannot name a
host, so any address on that port).
*/}}
{{- define "overshoot-operator.apiPort" -}}
{{- $url := urlParse .Values.apiUrl }}
{{- $port := regexFind ":[0-9]+$" $url.host | trimPrefix ":" }}
{{- if $port }}{{ $port }}{{ else if eq $url.scheme "http" }}80{{ else }}443{{ end }}
{{- end }}

{{/*
NetworkPolicy egress rules from a list of networkPolicy entries ({cidr, except, ports}, see
values.yaml): one rule per entry, to its CIDR (minus `except`) on its ports (all ports when
it names none). The caller handles an empty list.
*/}}
{{- define "overshoot-operator.egressRules" -}}
{{- range . }}
- to:
    - ipBlock:
        cidr: {{ .cidr }}
        {{- with .except }}
        except:
          {{- toYaml . | nindent 10 }}
        {{- end }}
  {{- with .ports }}
  ports:
    {{- include "overshoot-operator.ports" . | trim | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}

{{/* NetworkPolicyPorts from a list of {port, endPort, protocol}; the protocol defaults to TCP. */}}
{{- define "overshoot-operator.ports" -}}
{{- range . }}
- port: {{ .port }}
  {{- with .endPort }}
  endPort: {{ . }}
  {{- end }}
  protocol: {{ .protocol | default "TCP" }}
{{- end }}
{{- end }}

{{/* Egress to DNS on any address: the cluster's resolver (a Service, or a node-local cache). */}}
{{- define "overshoot-operator.dnsEgress" -}}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end }}

{{/*
The namespaces of the publisher NetworkPolicy: the watched ones, or, when the operator
watches the whole cluster, networkPolicy.publisher.namespaces.
*/}}
{{- define "overshoot-operator.publisherPolicyNamespaces" -}}
{{- toJson (.Values.watchNamespaces | default .Values.networkPolicy.publisher.namespaces) }}
{{- end }}
