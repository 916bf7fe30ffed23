{{/* The chart's name. */}}
{{- define "sitecache.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: what most objects are called. */}}
{{- define "sitecache.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "sitecache.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sitecache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "sitecache.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "sitecache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sitecache
{{- end }}

{{- define "sitecache.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sitecache.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The controller image: repository@digest, or repository:tag (default: appVersion). */}}
{{- define "sitecache.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Namespaces where the snapshot ServiceAccount is created. */}}
{{- define "sitecache.snapshotNamespaces" -}}
{{- $ns := .Values.snapshotServiceAccount.namespaces }}
{{- if not $ns }}
{{- $ns = .Values.controller.watchNamespaces }}
{{- end }}
{{- if not $ns }}
{{- $ns = list .Release.Namespace }}
{{- end }}
{{- toJson (uniq $ns) }}
{{- end }}

{{/*
A map as comma-separated KEY=VALUE, sorted by key (the controller's list flags). A value with a
comma cannot be passed: the chart refuses it.
*/}}
{{- define "sitecache.keyValues" -}}
{{- $items := list }}
{{- range $k, $v := . }}
{{- if contains "," (toString $v) }}
{{- fail (printf "snapshotServiceAccount.annotations.%s: a value with ',' cannot be passed to the controller" $k) }}
{{- end }}
{{- $items = append $items (printf "%s=%s" $k $v) }}
{{- end }}
{{- join "," $items }}
{{- end }}
