{{- define "iceos.fullname" -}}
{{ .Release.Name }}-iceos
{{- end }}

{{- define "iceos.secret" -}}
{{- if .Values.existingSecret }}{{ .Values.existingSecret }}{{ else }}{{ .Release.Name }}-iceos{{ end }}
{{- end }}
