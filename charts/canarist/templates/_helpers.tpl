{{/* Names ------------------------------------------------------------------------------------ */}}

{{- define "canarist.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every namespaced object of the release (63 characters at most). */}}
{{- define "canarist.fullname" -}}
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

{{/*
Cluster-scoped objects carry the release namespace too: releases of the same name in two
namespaces (e.g. one operator per team, each with watchNamespaces) must not fight over them.
*/}}
{{- define "canarist.clusterName" -}}
{{- printf "%s-%s" (include "canarist.fullname" .) .Release.Namespace | trunc 253 | trimSuffix "-" }}
{{- end }}

{{- define "canarist.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "canarist.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "canarist.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "canarist.judge.fullname" -}}
{{- printf "%s-judge" (include "canarist.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels ----------------------------------------------------------------------------------- */}}

{{- define "canarist.labels" -}}
helm.sh/chart: {{ include "canarist.chart" . }}
{{ include "canarist.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: canarist
{{- end }}

{{- define "canarist.selectorLabels" -}}
app.kubernetes.io/name: {{ include "canarist.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "canarist.operator.labels" -}}
{{ include "canarist.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "canarist.operator.selectorLabels" -}}
{{ include "canarist.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "canarist.judge.labels" -}}
{{ include "canarist.labels" . }}
app.kubernetes.io/component: judge
{{- end }}

{{- define "canarist.judge.selectorLabels" -}}
{{ include "canarist.selectorLabels" . }}
app.kubernetes.io/component: judge
{{- end }}

{{/* Images --------------------------------------------------------------------------------- */}}

{{- define "canarist.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{- define "canarist.judge.image" -}}
{{- $repository := .Values.judge.image.repository | default .Values.image.repository }}
{{- $tag := .Values.judge.image.tag | default .Values.image.tag | default .Chart.AppVersion | toString }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}

{{/* RBAC ----------------------------------------------------------------------------------- */}}

{{/*
The operator's rules in a watched namespace (a Role) or in all of them (a ClusterRole): exactly
the API calls of canarist.handlers and kopf, nothing else. No wildcards, no Secrets, no delete
except on the HTTPRoute canarist owns.
*/}}
{{- define "canarist.operator.rules" -}}
# CanaryRelease: kopf lists and watches it (the operator's cache), patches its finalizer and its
# progress annotations; a tick reads it fresh (get) now and then. Deployments, Services, HTTPRoutes
# and HPAs are watched the same way: a tick reads them from that cache.
- apiGroups: [canarist.dev]
  resources: [canaryreleases]
  verbs: [get, list, watch, patch, update]
# The tick replaces status with optimistic concurrency (update); kopf patches status.
- apiGroups: [canarist.dev]
  resources: [canaryreleases/status]
  verbs: [get, update, patch]
# ownerReferences to a CanaryRelease with blockOwnerDeletion: true (on the primary Deployment,
# the Services and the HTTPRoute) require update on its finalizers subresource where the
# OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift, hardened clusters).
- apiGroups: [canarist.dev]
  resources: [canaryreleases/finalizers]
  verbs: [update]
# The target Deployment is read; <target>-primary is created, replaced, and patched (its
# ownerReferences dropped when deletion leaves it serving, or taken by a new release). Never deleted: the
# garbage collector removes it through its ownerReference.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, update, patch]
# The canary (the target itself) is scaled through the scale subresource only, so canarist never
# writes the user's Deployment spec.
- apiGroups: [apps]
  resources: [deployments/scale]
  verbs: [get, update, patch]
# Services <target>-primary and <target>-canary: created, patched, and on release the canary
# Service is replaced without canarist's ownerReference.
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, update, patch]
# Tracked configuration: the ConfigMaps (and, with trackSecrets, Secrets) a target's pod template
# references are part of its revision. They are watched (only a hash of each is kept in memory; a
# Secret's content is never logged or written anywhere but into its copy) and read when the
# primary is written. The primary's copies, <name>-primary, are created and replaced; deleted
# (uid precondition) only when an optional reference no longer has its object; their
# ownerReferences dropped when deletion leaves the primary serving, or taken by a new release.
- apiGroups: [""]
  resources: [configmaps{{ if .Values.trackSecrets }}, secrets{{ end }}]
  verbs: [get, list, watch, create, update, patch, delete]
# Events about a CanaryRelease (canarist.kube.events posts core/v1 Events; kopf posts warnings).
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
# The same Events through the events.k8s.io API, which kopf may use.
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
# The HTTPRoute canarist owns: created, replaced with the resourceVersion read, and deleted
# (uid precondition) when its CanaryRelease is deleted.
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [get, list, watch, create, update, patch, delete]
# HPAs: watched (the target's is found among the namespace's); its twin <hpa>-primary (scaling the
# primary) is read, created, replaced with the resourceVersion read, and deleted (uid
# precondition) when the user's HPA is gone or the workload is handed back.
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, update, delete]
{{- end }}
