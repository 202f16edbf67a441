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

{{- /* egress to the bundled SeaweedFS, or to any address on the usual S3 ports when an external store is used */}}
{{- define "sherlock.s3Egress" }}
    {{- if .Values.seaweedfs.enabled }}
    - to:
        - podSelector:
            matchLabels:
              app.kubernetes.io/name: seaweedfs
      ports:
        - port: 8333
          protocol: TCP
    {{- else }}
    - ports:
        - port: 443
          protocol: TCP
        - port: 8333
          protocol: TCP
        - port: 9000
          protocol: TCP
    {{- end }}
{{- end }}

{{- /* egress to the bundled MLflow, or to any address on its ports when an external server is used */}}
{{- define "sherlock.mlflowEgress" }}
    {{- if .Values.mlflow.enabled }}
    - to:
        - podSelector:
            matchLabels:
              app.kubernetes.io/name: mlflow
      ports:
        - port: 5000
          protocol: TCP
    {{- else }}
    - ports:
        - port: 443
          protocol: TCP
        - port: 5000
          protocol: TCP
    {{- end }}
{{- end }}

{{- /* the S3 endpoint's CA (s3CABundleConfigMap) for a client container: env, mount and volume */}}
{{- define "sherlock.s3CAEnv" }}
{{- if .Values.s3CABundleConfigMap }}
            - name: AWS_CA_BUNDLE
              value: /etc/sherlock-s3-ca/cabundle.crt
{{- end }}
{{- end }}

{{- define "sherlock.s3CAMount" }}
{{- if .Values.s3CABundleConfigMap }}
            - name: s3-ca
              mountPath: /etc/sherlock-s3-ca
              readOnly: true
{{- end }}
{{- end }}

{{- define "sherlock.s3CAVolume" }}
{{- if .Values.s3CABundleConfigMap }}
        - name: s3-ca
          configMap:
            name: {{ .Values.s3CABundleConfigMap }}
            items:
              - key: cabundle.crt
                path: cabundle.crt
{{- end }}
{{- end }}
