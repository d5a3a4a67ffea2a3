{{/* The operator's name: its Deployment, ServiceAccount, ClusterRole and Lease. */}}
{{- define "mlmodel-operator.fullname" -}}
{{- default "mlmodel-operator" .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels selecting the operator's pods (the same as deploy/manager's). */}}
{{- define "mlmodel-operator.selectorLabels" -}}
app.kubernetes.io/name: mlmodel-operator
app.kubernetes.io/component: manager
{{- end -}}

{{/* Helm's labels on every object of the release. */}}
{{- define "mlmodel-operator.releaseLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "mlmodel-operator.serviceAccountName" -}}
{{- default (include "mlmodel-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "mlmodel-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Settings that no schema can check: refused with one line naming the value. */}}
{{- define "mlmodel-operator.validate" -}}
{{- $le := .Values.leaderElection -}}
{{- if and $le.enabled (ge (int $le.renewDeadlineSeconds) (int $le.leaseDurationSeconds)) -}}
{{- fail (printf "leaderElection.renewDeadlineSeconds (%v) must be less than leaderElection.leaseDurationSeconds (%v)" $le.renewDeadlineSeconds $le.leaseDurationSeconds) -}}
{{- end -}}
{{- if and (not $le.enabled) (gt (int .Values.replicaCount) 1) -}}
{{- fail (printf "replicaCount (%v) above 1 needs leaderElection.enabled: replicas without a leader would all act" .Values.replicaCount) -}}
{{- end -}}
{{- end -}}
