{{- define "cloudimage-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cloudimage-operator.serviceAccountName" -}}
{{- default (include "cloudimage-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* The leader election Lease's name: leaderElection.id, else the full name. */}}
{{- define "cloudimage-operator.leaseName" -}}
{{- .Values.leaderElection.id | default (include "cloudimage-operator.fullname" .) -}}
{{- end -}}

{{- define "cloudimage-operator.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "cloudimage-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
The namespaces the operator watches, comma-separated ("" = all). In
secretAccess.mode=namespaces: watchNamespaces, else secretAccess.namespaces;
rendering fails when that is empty, or when a watched namespace has not opted
in (the operator's watch of Secret metadata there would be refused).
*/}}
{{- define "cloudimage-operator.watchNamespaces" -}}
{{- $mode := .Values.secretAccess.mode | default "cluster" -}}
{{- if eq $mode "cluster" -}}
{{- join "," .Values.watchNamespaces -}}
{{- else if eq $mode "namespaces" -}}
{{- $secretNs := include "cloudimage-operator.secretNamespaces" . | splitList "," | compact -}}
{{- $watch := .Values.watchNamespaces | default $secretNs -}}
{{- if not $watch -}}
{{- fail "secretAccess.mode=namespaces needs the namespaces that opt in: set secretAccess.namespaces (or watchNamespaces). The operator watches the metadata of the Secrets in every namespace it watches, so it cannot watch all namespaces with Secret access limited to some." -}}
{{- end -}}
{{- range $watch -}}
{{- if not (has . $secretNs) -}}
{{- fail (printf "watchNamespaces has %q but secretAccess.namespaces does not: the operator watches the metadata of the Secrets in every namespace it watches, so every watched namespace must opt in (add it to secretAccess.namespaces, or leave secretAccess.namespaces empty to use watchNamespaces)" .) -}}
{{- end -}}
{{- end -}}
{{- join "," $watch -}}
{{- else -}}
{{- fail (printf "secretAccess.mode must be cluster or namespaces, not %q" $mode) -}}
{{- end -}}
{{- end -}}

{{/* The namespaces that opt in to Secret access (mode namespaces), comma-separated. */}}
{{- define "cloudimage-operator.secretNamespaces" -}}
{{- join "," (.Values.secretAccess.namespaces | default .Values.watchNamespaces | uniq) -}}
{{- end -}}

{{/* host:port, with brackets around an IPv6 host. */}}
{{- define "cloudimage-operator.hostPort" -}}
{{- $host := index . 0 | toString -}}
{{- if and (contains ":" $host) (not (hasPrefix "[" $host)) -}}
[{{ $host }}]:{{ index . 1 }}
{{- else -}}
{{ $host }}:{{ index . 1 }}
{{- end -}}
{{- end -}}

{{/* NetworkPolicy ports: a number (TCP) or a full NetworkPolicyPort map. */}}
{{- define "cloudimage-operator.npPorts" -}}
{{- range . }}
{{- if kindIs "map" . }}
- {{ toYaml . | nindent 2 | trim }}
{{- else }}
- port: {{ . }}
  protocol: TCP
{{- end }}
{{- end }}
{{- end -}}

{{/* One NetworkPolicy egress rule to an ipBlock: dict of what, entry, cidr, except, ports. */}}
{{- define "cloudimage-operator.npIpRule" -}}
{{- if not .cidr }}
{{- fail (printf "%s: every entry needs a cidr (got %v)" .what .entry) }}
{{- end -}}
- to:
    - ipBlock:
        cidr: {{ .cidr }}
        {{- with .except }}
        except: {{- toYaml . | nindent 10 }}
        {{- end }}
  {{- with .ports }}
  ports: {{- include "cloudimage-operator.npPorts" . | trim | nindent 4 }}
  {{- end }}
{{- end -}}
