{{/* Names. */}}
{{- define "keycutter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "keycutter.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else if contains (include "keycutter.name" .) .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "keycutter.name" .) | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "keycutter.serverName" -}}{{ include "keycutter.fullname" . }}-server{{- end -}}
{{- define "keycutter.agentName" -}}{{ include "keycutter.fullname" . }}-agent{{- end -}}

{{- define "keycutter.serverServiceAccount" -}}
{{- if .Values.server.serviceAccount.create -}}
{{- default (include "keycutter.serverName" .) .Values.server.serviceAccount.name -}}
{{- else -}}
{{- required "server.serviceAccount.name is required when server.serviceAccount.create is false" .Values.server.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "keycutter.agentServiceAccount" -}}
{{- if .Values.agent.serviceAccount.create -}}
{{- default (include "keycutter.agentName" .) .Values.agent.serviceAccount.name -}}
{{- else -}}
{{- required "agent.serviceAccount.name is required when agent.serviceAccount.create is false" .Values.agent.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Common labels. */}}
{{- define "keycutter.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "keycutter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: keycutter
{{- end -}}

{{/* Labels of pod templates besides the selector's. */}}
{{- define "keycutter.podLabels" -}}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: keycutter
{{- end -}}

{{- define "keycutter.serverSelector" -}}
app.kubernetes.io/name: {{ include "keycutter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "keycutter.agentSelector" -}}
app.kubernetes.io/name: {{ include "keycutter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "keycutter.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}
{{- end -}}

{{/* In-place resize (a container's resizePolicy list, from values); nothing when empty. */}}
{{- define "keycutter.resizePolicy" -}}
{{- with . -}}
resizePolicy:
  {{- toYaml . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/* The server's URL as the agents reach it. */}}
{{- define "keycutter.serverUrl" -}}
{{- $scheme := ternary "https" "http" .Values.server.tls.enabled -}}
{{- printf "%s://%s.%s.svc:%d" $scheme (include "keycutter.serverName" .) .Release.Namespace (int .Values.server.port) -}}
{{- end -}}

{{- define "keycutter.caSecretName" -}}
{{- default .Values.server.tls.secretName .Values.server.tls.caSecretName -}}
{{- end -}}

{{- define "keycutter.storeEnabled" -}}
{{- if or .Values.store.url .Values.store.existingSecret -}}true{{- end -}}
{{- end -}}

{{/* The hook's selection of pod traffic, as the agent's flags. */}}
{{- define "keycutter.hookArgs" -}}
- --hook-chain={{ .Values.agent.hook.chain }}
{{- if .Values.agent.hook.podInterfaces }}
- --hook-pod-interface={{ join "," .Values.agent.hook.podInterfaces }}
{{- end }}
{{- if .Values.agent.hook.podCidrs }}
- --hook-pod-cidr={{ join "," .Values.agent.hook.podCidrs }}
{{- end }}
{{- end -}}

{{/* PATH that makes `iptables` the backend chosen in agent.hook.iptablesMode (see deploy/Dockerfile). */}}
{{- define "keycutter.iptablesPath" -}}
{{- if eq .Values.agent.hook.iptablesMode "legacy" -}}
/usr/local/lib/keycutter/iptables-legacy:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
{{- else if eq .Values.agent.hook.iptablesMode "nft" -}}
/usr/local/lib/keycutter/iptables-nft:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
{{- else -}}
{{- fail "agent.hook.iptablesMode must be nft or legacy" -}}
{{- end -}}
{{- end -}}

{{- define "keycutter.agentCapabilities" -}}
capabilities:
  drop: ["ALL"]
  {{- if and .Values.agent.hook.enabled (eq .Values.agent.hook.iptablesMode "legacy") }}
  add: ["NET_ADMIN", "NET_RAW"]
  {{- else if .Values.agent.hook.enabled }}
  add: ["NET_ADMIN"]
  {{- end }}
{{- end -}}
