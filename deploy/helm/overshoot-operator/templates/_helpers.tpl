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

{{/* More than one replica: a StatefulSet with kopf peering. */}}
{{- define "overshoot-operator.peering" -}}
{{- if gt (int .Values.replicaCount) 1 }}true{{ end }}
{{- end }}

{{/*
The kopf peering name: the release's full name, so two releases in one cluster never share
a peering (and never kopf's implicit "default", which any stray kopf operator would join).
*/}}
{{- define "overshoot-operator.peeringName" -}}
{{- include "overshoot-operator.fullname" . }}
{{- end }}

{{/*
The metadata lines the generated CRD templates (templates/crds/) add under `metadata:`.
*/}}
{{- define "overshoot-operator.crdMetadata" -}}
labels:
  {{- include "overshoot-operator.labels" . | nindent 2 }}
{{- if .Values.crds.keep }}
annotations:
  # Uninstalling (or `crds.install: false`) must not delete the CRD and every stream with it.
  helm.sh/resource-policy: keep
{{- end }}
{{- end }}
