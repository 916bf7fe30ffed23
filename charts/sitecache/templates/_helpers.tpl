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

{{/*
The labels of every object the chart renders: the chart's own, over the object's (the list's
second item: a dict, for example the component or a ServiceMonitor's labels), over commonLabels,
over global.commonLabels. Usage: include "sitecache.labels" . or
include "sitecache.labelsWith" (list . (dict "app.kubernetes.io/component" "controller")).
*/}}
{{- define "sitecache.labels" -}}
{{- include "sitecache.labelsWith" (list . (dict)) }}
{{- end }}

{{- define "sitecache.labelsWith" -}}
{{- $ctx := index . 0 }}
{{- $own := dict
  "helm.sh/chart" (printf "%s-%s" $ctx.Chart.Name $ctx.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-")
  "app.kubernetes.io/name" (include "sitecache.name" $ctx)
  "app.kubernetes.io/instance" $ctx.Release.Name
  "app.kubernetes.io/version" $ctx.Chart.AppVersion
  "app.kubernetes.io/managed-by" $ctx.Release.Service
  "app.kubernetes.io/part-of" "sitecache"
}}
{{- $global := (($ctx.Values.global | default dict).commonLabels) | default dict }}
{{- toYaml (merge $own (deepCopy (index . 1 | default dict)) (deepCopy ($ctx.Values.commonLabels | default dict)) (deepCopy $global)) }}
{{- end }}

{{/* Pull secrets of the controller pod: global.imagePullSecrets, then imagePullSecrets. */}}
{{- define "sitecache.imagePullSecrets" -}}
{{- $global := ((.Values.global | default dict).imagePullSecrets) | default list }}
{{- toYaml (concat $global (.Values.imagePullSecrets | default list) | uniq) }}
{{- end }}

{{/* The controller pod's priority class: priorityClassName, else global.priorityClassName. */}}
{{- define "sitecache.priorityClassName" -}}
{{- .Values.priorityClassName | default ((.Values.global | default dict).priorityClassName) | default "" }}
{{- end }}

{{/*
The snapshot Job defaults (jobDefaults) as the controller's --job-defaults file reads them: only
the fields set, empty when none is.
*/}}
{{- define "sitecache.jobDefaults" -}}
{{- $doc := dict }}
{{- range $key, $value := .Values.jobDefaults }}
{{- if $value }}
{{- $_ := set $doc $key $value }}
{{- end }}
{{- end }}
{{- if $doc }}
{{- toYaml $doc }}
{{- end }}
{{- end }}

{{- define "sitecache.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sitecache.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The controller image: [registry/]repository, then @digest, or :tag (default: appVersion). With
image.registry set, image.repository is the path within that registry.
*/}}
{{- define "sitecache.image" -}}
{{- $repository := .Values.image.repository }}
{{- with .Values.image.registry }}
{{- $repository = printf "%s/%s" (trimSuffix "/" .) $repository }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (default .Chart.AppVersion .Values.image.tag) }}
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
