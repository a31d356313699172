{{- define "llmlb.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "llmlb.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "llmlb.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "llmlb.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "llmlb.fullname" .)) -}}
{{- end -}}

{{- define "llmlb.image" -}}
{{- $tag := .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- printf "%s:%s%s" .root.Values.image.repository $tag (get . "suffix" | default "") -}}
{{- end -}}

{{- define "llmlb.nodeImage" -}}
{{- $vendor := .Values.node.gpu.vendor -}}
{{- include "llmlb.image" (dict "root" . "suffix" (get (dict "nvidia" "-cuda" "amd" "-rocm" "none" "") $vendor)) -}}
{{- end -}}

{{/* The routers' headless Service: nodes join every ready router it lists (dns+). */}}
{{- define "llmlb.routerPods" -}}
{{- printf "%s-router-pods" (include "llmlb.fullname" .) -}}
{{- end -}}

{{/* Unprivileged, read-only, nothing gained: the image runs as user 10001. */}}
{{- define "llmlb.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "llmlb.probe" -}}
httpGet:
  path: {{ .path }}
  port: http
{{- end -}}

{{/* A value as TOML: JSON's scalars and arrays are TOML's; a map is an inline table. */}}
{{- define "llmlb.toml" -}}
{{- if kindIs "map" . -}}
{ {{- $first := true -}}
{{- range $key, $value := . -}}
{{- if not $first }}, {{ end }}{{ $first = false }}{{ toJson $key }} = {{ include "llmlb.toml" $value }}
{{- end -}} }
{{- else if kindIs "slice" . -}}
[{{- range $index, $value := . -}}{{ if $index }}, {{ end }}{{ include "llmlb.toml" $value }}{{- end -}}]
{{- else -}}
{{- toJson . -}}
{{- end -}}
{{- end -}}
