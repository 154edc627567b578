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
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of pod templates besides the selector's. */}}
{{- define "keycutter.podLabels" -}}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: keycutter
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
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

{{/*
Where the server's certificate comes from: "off" (plain HTTP), "certManager" (a Certificate the
chart renders), "secret" (an existing Secret, server.tls.secretName) or "selfManaged" (the
server makes, stores and rotates its own CA and certificate: the default).
*/}}
{{- define "keycutter.tlsMode" -}}
{{- if not .Values.server.tls.enabled -}}off
{{- else if .Values.server.tls.certManager.enabled -}}certManager
{{- else if .Values.server.tls.secretName -}}secret
{{- else -}}selfManaged
{{- end -}}
{{- end -}}

{{/* The Secret with the serving certificate: yours, cert-manager's or the server's own. */}}
{{- define "keycutter.tlsSecretName" -}}
{{- $mode := include "keycutter.tlsMode" . -}}
{{- if eq $mode "secret" -}}{{ .Values.server.tls.secretName }}
{{- else if eq $mode "certManager" -}}{{ include "keycutter.serverName" . }}-tls
{{- else if eq $mode "selfManaged" -}}{{ include "keycutter.serverName" . }}-managed-tls
{{- end -}}
{{- end -}}

{{/* The ConfigMap the self-managed CA bundle is published in (by the server, not by Helm). */}}
{{- define "keycutter.caBundleName" -}}{{ include "keycutter.serverName" . }}-ca{{- end -}}

{{/* The Secret agents take the CA from (cert-manager, existing Secret modes). */}}
{{- define "keycutter.caSecretName" -}}
{{- default (include "keycutter.tlsSecretName" .) .Values.server.tls.caSecretName -}}
{{- end -}}

{{/* The serving certificate's names: the Service's, as agents and in-cluster clients write them. */}}
{{- define "keycutter.tlsDnsNames" -}}
{{- $svc := include "keycutter.serverName" . -}}
{{- $ns := .Release.Namespace -}}
{{- $names := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.server.tls.clusterDomain) -}}
{{- concat $names .Values.server.tls.extraDnsNames | uniq | toJson -}}
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

{{/*
The server's affinity: the user's server.affinity in full (nodeAffinity, podAffinity and
podAntiAffinity), with the chart's spread of replicas across nodes (server.podAntiAffinity: soft,
hard or none) added to the user's anti-affinity terms rather than replacing them.
*/}}
{{- define "keycutter.serverAffinity" -}}
{{- $affinity := deepCopy (.Values.server.affinity | default dict) -}}
{{- $spread := dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" (include "keycutter.serverSelector" . | fromYaml)) -}}
{{- if ne .Values.server.podAntiAffinity "none" -}}
{{- $anti := get $affinity "podAntiAffinity" | default dict -}}
{{- if eq .Values.server.podAntiAffinity "hard" -}}
{{- $_ := set $anti "requiredDuringSchedulingIgnoredDuringExecution" (append (get $anti "requiredDuringSchedulingIgnoredDuringExecution" | default list) $spread) -}}
{{- else -}}
{{- $_ := set $anti "preferredDuringSchedulingIgnoredDuringExecution" (append (get $anti "preferredDuringSchedulingIgnoredDuringExecution" | default list) (dict "weight" 100 "podAffinityTerm" $spread)) -}}
{{- end -}}
{{- $_ := set $affinity "podAntiAffinity" $anti -}}
{{- end -}}
{{- if $affinity }}
{{- toYaml $affinity }}
{{- end }}
{{- end -}}

{{/*
One of the agent's probes. `port: ops` becomes the agent's opsPort number: with the hand-over the
agent declares no container ports (two agents of a node share its ports during a rollout), so a
named port would not resolve.
*/}}
{{- define "keycutter.agentProbe" -}}
{{- $probe := deepCopy .probe -}}
{{- if and $probe.httpGet (eq (toString $probe.httpGet.port) "ops") -}}
{{- $_ := set $probe.httpGet "port" (int .opsPort) -}}
{{- end -}}
{{- toYaml $probe -}}
{{- end -}}
