{{/*
The operator Pod template, shared by the Deployment (one replica, standalone) and the
StatefulSet (several replicas with kopf peering).
*/}}
{{- define "overshoot-operator.podTemplate" -}}
{{- $peering := include "overshoot-operator.peering" . -}}
metadata:
  labels:
    {{- include "overshoot-operator.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    {{- if .Values.metrics.scrapeAnnotations }}
    prometheus.io/scrape: "true"
    prometheus.io/port: {{ .Values.ports.metrics | quote }}
    prometheus.io/path: /metrics
    {{- end }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "overshoot-operator.serviceAccountName" . }}
  automountServiceAccountToken: true
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
    - name: operator
      image: {{ include "overshoot-operator.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      command: ["overshoot-operator"]
      {{- if or $peering .Values.verbose }}
      args:
        {{- if $peering }}
        # kopf needs a distinct priority per replica to let exactly one work: the StatefulSet
        # ordinal (0, 1, ...), read from the Pod's label through POD_INDEX below; the kubelet
        # expands $(POD_INDEX), so no shell is involved.
        - --peering={{ include "overshoot-operator.peeringName" . }}
        - --priority=$(POD_INDEX)
        {{- end }}
        {{- if .Values.verbose }}
        - --verbose
        {{- end }}
      {{- end }}
      env:
        # kopf's identity in the peering object: the Pod's name.
        - name: POD_ID
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        {{- if $peering }}
        - name: POD_INDEX
          valueFrom:
            fieldRef:
              fieldPath: metadata.labels['apps.kubernetes.io/pod-index']
        {{- end }}
        # OperatorSettings (overshoot_operator/settings.py): one variable per field.
        - name: OVERSHOOT_API_URL
          value: {{ .Values.apiUrl | quote }}
        - name: OVERSHOOT_DEFAULT_API_KEY_SECRET_NAMESPACE
          value: {{ .Release.Namespace | quote }}
        - name: OVERSHOOT_DEFAULT_API_KEY_SECRET_NAME
          value: {{ .Values.defaultApiKeySecret.name | quote }}
        - name: OVERSHOOT_DEFAULT_API_KEY_SECRET_KEY
          value: {{ .Values.defaultApiKeySecret.key | quote }}
        - name: OVERSHOOT_PUBLISHER_IMAGE
          value: {{ include "overshoot-operator.publisherImage" . | quote }}
        - name: OVERSHOOT_PUBLISHER_IMAGE_PULL_POLICY
          value: {{ .Values.publisher.image.pullPolicy | quote }}
        - name: OVERSHOOT_PUBLISHER_CPU_REQUEST
          value: {{ .Values.publisher.resources.requests.cpu | quote }}
        - name: OVERSHOOT_PUBLISHER_MEMORY_REQUEST
          value: {{ .Values.publisher.resources.requests.memory | quote }}
        - name: OVERSHOOT_PUBLISHER_CPU_LIMIT
          value: {{ .Values.publisher.resources.limits.cpu | quote }}
        - name: OVERSHOOT_PUBLISHER_MEMORY_LIMIT
          value: {{ .Values.publisher.resources.limits.memory | quote }}
        - name: OVERSHOOT_PUBLISHER_HEALTH_PORT
          value: {{ .Values.publisher.healthPort | quote }}
        - name: OVERSHOOT_KEEPALIVE_INTERVAL_SECONDS
          value: {{ .Values.keepalive.intervalSeconds | quote }}
        - name: OVERSHOOT_KEEPALIVE_JITTER
          value: {{ .Values.keepalive.jitter | quote }}
        - name: OVERSHOOT_STATUS_POLL_SECONDS
          value: {{ .Values.statusPollSeconds | quote }}
        - name: OVERSHOOT_FRAMES_FRESH_SECONDS
          value: {{ .Values.framesFreshSeconds | quote }}
        - name: OVERSHOOT_API_MAX_CONCURRENCY
          value: {{ .Values.apiLimits.maxConcurrency | quote }}
        - name: OVERSHOOT_API_MAX_PER_SECOND
          value: {{ .Values.apiLimits.maxPerSecond | quote }}
        - name: OVERSHOOT_DELETE_GIVE_UP_SECONDS
          value: {{ .Values.deleteGiveUpSeconds | quote }}
        - name: OVERSHOOT_NAMESPACES
          value: {{ join "," .Values.watchNamespaces | quote }}
        - name: OVERSHOOT_HEALTH_PORT
          value: {{ .Values.ports.health | quote }}
        - name: OVERSHOOT_METRICS_PORT
          value: {{ .Values.ports.metrics | quote }}
      ports:
        - name: health
          containerPort: {{ .Values.ports.health }}
          protocol: TCP
        - name: metrics
          containerPort: {{ .Values.ports.metrics }}
          protocol: TCP
      # kopf's liveness endpoint answers once the operator runs; the same endpoint tells
      # readiness (kopf has no separate one), probed sooner and more often.
      livenessProbe:
        httpGet:
          path: /healthz
          port: health
        {{- toYaml .Values.livenessProbe | nindent 8 }}
      readinessProbe:
        httpGet:
          path: /healthz
          port: health
        {{- toYaml .Values.readinessProbe | nindent 8 }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        # The root filesystem is read-only; Python and its libraries may still want a /tmp.
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
