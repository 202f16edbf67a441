{{/* Labels every object carries. */}}
{{- define "sherlock.labels" -}}
app.kubernetes.io/part-of: sherlock
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{/* The project image of a variant: sherlock.image (dict "root" $ "variant" "cpu"). */}}
{{- define "sherlock.image" -}}
{{ .root.Values.image.repository }}:{{ .root.Values.image.tag }}-{{ .variant }}
{{- end }}

{{/* Pod security context: non-root with the given uid, default seccomp. */}}
{{- define "sherlock.podSecurity" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
fsGroup: {{ . }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container security context: no escalation, read-only root, no capabilities. */}}
{{- define "sherlock.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* Egress to the cluster DNS, the first rule of a NetworkPolicy that restricts egress. */}}
{{- define "sherlock.dnsEgress" }}
    - to:
        - namespaceSelector: {}
          podSelector:
            matchLabels:
              k8s-app: kube-dns
      ports:
        - port: 53
          protocol: UDP
        - port: 53
          protocol: TCP
{{- end }}
