{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "healingwork.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every resource name. */}}
{{- define "healingwork.fullname" -}}
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
The name of one of the release's objects, "<fullname>-<component>", fitted to its kind's limit: 63 (a DNS
label: Services, and a Job's name becomes its pods' job-name label) unless "limit" says less, 52 for a
CronJob (its Jobs append "-" and 10 digits, within the 63 of a label value). A longer name keeps its
component and gets a hash of the whole name, "<fullname, cut>-<5 hex>-<component>", so two objects never
shorten to the same name and the name stays stable across upgrades (the widely used charts' trunc + hash).
Parameters: root (the chart context), component, limit (optional, default 63).
*/}}
{{- define "healingwork.componentName" -}}
{{- $fullname := include "healingwork.fullname" .root }}
{{- $name := printf "%s-%s" $fullname .component }}
{{- $limit := int (default 63 .limit) }}
{{- if le (len $name) $limit }}
{{- $name }}
{{- else }}
{{- $keep := sub $limit (add (len .component) 7) | int }}
{{- printf "%s-%s-%s" ($fullname | trunc $keep | trimSuffix "-") ($name | sha256sum | trunc 5) .component }}
{{- end }}
{{- end }}

{{/* A CronJob's name: componentName with its limit of 52. */}}
{{- define "healingwork.cronJobName" -}}
{{- include "healingwork.componentName" (dict "root" .root "component" .job "limit" 52) }}
{{- end }}

{{- define "healingwork.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "healingwork.selectorLabels" -}}
app.kubernetes.io/name: {{ include "healingwork.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "healingwork.labels" -}}
helm.sh/chart: {{ include "healingwork.chart" . }}
{{ include "healingwork.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: healingwork
{{- end }}

{{/* The image reference: repository[:tag][@digest]; the tag defaults to appVersion. */}}
{{- define "healingwork.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The Secret every pod reads DATABASE_URL, HMAC_SECRET and SMTP_URL from (intake also SUPPRESSION_HASH_KEY). */}}
{{- define "healingwork.secretName" -}}
{{- default (include "healingwork.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/*
Non-secret settings, as environment variables: the data of the ConfigMap, and the env of the migration
hook Job (which runs before the ConfigMap exists on a first install).
*/}}
{{- define "healingwork.configData" -}}
{{- $c := .Values.config -}}
KAFKA_BOOTSTRAP_SERVERS: {{ $c.kafkaBootstrapServers | quote }}
PUBLIC_BASE_URL: {{ $c.publicBaseUrl | quote }}
FROM_EMAIL: {{ $c.fromEmail | quote }}
FROM_NAME: {{ $c.fromName | quote }}
LOG_LEVEL: {{ $c.logLevel | quote }}
KAFKA_PARTITIONS: {{ $c.kafkaPartitions | toString | quote }}
KAFKA_REPLICATION_FACTOR: {{ $c.kafkaReplicationFactor | toString | quote }}
KAFKA_TOPIC_RETENTION_HOURS: {{ $c.kafkaTopicRetentionHours | toString | quote }}
TOPIC_LEADS_ACCEPTED: {{ $c.topics.leadsAccepted | quote }}
TOPIC_EMAIL_DISPATCH: {{ $c.topics.emailDispatch | quote }}
TOPIC_EMAIL_EVENTS: {{ $c.topics.emailEvents | quote }}
TOPIC_EMAIL_DLQ: {{ $c.topics.emailDlq | quote }}
TOPIC_LEADS_SUPPRESSED: {{ $c.topics.leadsSuppressed | quote }}
TOPIC_LIFECYCLE_EVENTS: {{ $c.topics.lifecycleEvents | quote }}
{{- with $c.kafkaGroupPrefix }}
KAFKA_GROUP_PREFIX: {{ . | quote }}
{{- end }}
{{- range $name, $value := $c.extraEnv }}
{{ $name }}: {{ $value | quote }}
{{- end }}
{{- end }}

{{/*
Every environment variable the chart sets, and the value (or reason) it comes from: config.extraEnv may not
name one (a second, conflicting place for one setting; a secret would land in the ConfigMap).
*/}}
{{- define "healingwork.chartSettings" -}}
KAFKA_BOOTSTRAP_SERVERS: config.kafkaBootstrapServers
PUBLIC_BASE_URL: config.publicBaseUrl
FROM_EMAIL: config.fromEmail
FROM_NAME: config.fromName
LOG_LEVEL: config.logLevel
KAFKA_PARTITIONS: config.kafkaPartitions
KAFKA_REPLICATION_FACTOR: config.kafkaReplicationFactor
KAFKA_TOPIC_RETENTION_HOURS: config.kafkaTopicRetentionHours
TOPIC_LEADS_ACCEPTED: config.topics.leadsAccepted
TOPIC_EMAIL_DISPATCH: config.topics.emailDispatch
TOPIC_EMAIL_EVENTS: config.topics.emailEvents
TOPIC_EMAIL_DLQ: config.topics.emailDlq
TOPIC_LEADS_SUPPRESSED: config.topics.leadsSuppressed
TOPIC_LIFECYCLE_EVENTS: config.topics.lifecycleEvents
KAFKA_GROUP_PREFIX: config.kafkaGroupPrefix
LIST_ID_DOMAIN: config.listIdDomain
UNSUBSCRIBE_MAILTO: config.unsubscribeMailto
DOUBLE_OPT_IN: config.doubleOptIn.mode
CONFIRMATION_SUBJECT: config.doubleOptIn.confirmationSubject
CONFIRMATION_TEMPLATE_FILE: config.doubleOptIn.confirmationTemplate (or existingConfigMap)
SMTP_RATE_PER_S: dispatcher.smtpRatePerSecond
TRACK_OPENS: dispatcher.trackOpens
TRACK_CLICKS: dispatcher.trackClicks
TRUSTED_PROXIES: intake.trustedProxies
PUBLIC_FORM_ORIGINS: intake.publicFormOrigins
SNS_TOPIC_ARNS: intake.snsTopicArns
OPENAPI_ENABLED: intake.openapi
OPERATOR_NAMESPACES: operator.watchNamespaces (or operator.clusterWide)
OPERATOR_REFRESH_INTERVAL_S: operator.refreshIntervalSeconds
PUSHGATEWAY_URL: jobs.pushgatewayUrl
PORT: the chart (the intake listens on 8000)
HEALTH_PORT: the chart (every service's health port is 8080)
DATABASE_URL: secrets.databaseUrl (or secrets.existingSecret)
HMAC_SECRET: secrets.hmacSecret (or secrets.existingSecret)
SMTP_URL: secrets.smtpUrl (or secrets.existingSecret)
SUPPRESSION_HASH_KEY: secrets.suppressionHashKey (or secrets.existingSecret)
HMAC_SECRET_PREVIOUS: secrets.hmacSecretPrevious (or secrets.existingSecret)
WEBHOOK_SECRET: secrets.webhookSecret (or secrets.existingSecret)
REQUEST_SIGNING_KEYS: secrets.requestSigningKeys (or secrets.existingSecret)
{{- end }}

{{/* The confirmation email template's ConfigMap: the chart's own, or the one named in existingConfigMap. */}}
{{- define "healingwork.confirmationTemplateConfigMap" -}}
{{- $d := .Values.config.doubleOptIn }}
{{- if $d.existingConfigMap }}
{{- $d.existingConfigMap }}
{{- else if $d.confirmationTemplate }}
{{- include "healingwork.componentName" (dict "root" . "component" "confirmation-template") }}
{{- end }}
{{- end }}

{{/* Where the dispatcher finds the confirmation template (CONFIRMATION_TEMPLATE_FILE). */}}
{{- define "healingwork.confirmationTemplateDir" -}}
/etc/healingwork/confirmation-template
{{- end }}

{{/*
An env entry `- name: NAME / value: "..."` only when the value is set, so a value left empty leaves the
service's own default. Parameters: name, value (a string, or a list joined with commas).
*/}}
{{- define "healingwork.optionalEnv" -}}
{{- $value := kindIs "slice" .value | ternary (join "," .value) (.value | toString) }}
{{- if $value }}
- name: {{ .name }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}

{{/*
Fail with one message listing every missing or invalid value, so an operator fixes a broken values file
in one round (the services validate the same settings again at start-up, in more depth).
*/}}
{{- define "healingwork.validate" -}}
{{- $problems := list }}
{{- $c := .Values.config }}
{{- $s := .Values.secrets }}
{{- if not $c.kafkaBootstrapServers }}
{{- $problems = append $problems "config.kafkaBootstrapServers is required: the Kafka bootstrap servers as host:port[,host:port...]" }}
{{- end }}
{{- if not $c.publicBaseUrl }}
{{- $problems = append $problems "config.publicBaseUrl is required: the public http(s) URL of the intake, used in tracking and unsubscribe links" }}
{{- end }}
{{- if not $c.fromEmail }}
{{- $problems = append $problems "config.fromEmail is required: the sender address of every email" }}
{{- end }}
{{- if not $c.fromName }}
{{- $problems = append $problems "config.fromName is required: the sender display name of every email" }}
{{- end }}
{{- if $s.existingSecret }}
{{- if or $s.databaseUrl $s.hmacSecret $s.smtpUrl $s.suppressionHashKey }}
{{- $problems = append $problems (printf "secrets.existingSecret (%s) is set, so secrets.databaseUrl, secrets.hmacSecret, secrets.smtpUrl and secrets.suppressionHashKey must be empty: put DATABASE_URL, HMAC_SECRET, SMTP_URL and SUPPRESSION_HASH_KEY in that Secret" $s.existingSecret) }}
{{- end }}
{{- else }}
{{- if not $s.databaseUrl }}
{{- $problems = append $problems "secrets.databaseUrl is required (or set secrets.existingSecret): postgresql://user:password@host:5432/database" }}
{{- end }}
{{- if not $s.hmacSecret }}
{{- $problems = append $problems "secrets.hmacSecret is required (or set secrets.existingSecret): generate one with openssl rand -hex 32" }}
{{- else if lt (len $s.hmacSecret) 32 }}
{{- $problems = append $problems "secrets.hmacSecret must be at least 32 bytes: generate one with openssl rand -hex 32" }}
{{- end }}
{{- if not $s.smtpUrl }}
{{- $problems = append $problems "secrets.smtpUrl is required (or set secrets.existingSecret): smtp://[user:password@]host[:port] or smtps://..." }}
{{- end }}
{{- if not $s.suppressionHashKey }}
{{- $problems = append $problems "secrets.suppressionHashKey is required (or set secrets.existingSecret): generate one with openssl rand -hex 32, and never rotate it" }}
{{- else if lt (len $s.suppressionHashKey) 32 }}
{{- $problems = append $problems "secrets.suppressionHashKey must be at least 32 bytes: generate one with openssl rand -hex 32" }}
{{- end }}
{{- end }}
{{- $d := $c.doubleOptIn }}
{{- if and $d.confirmationTemplate $d.existingConfigMap }}
{{- $problems = append $problems (printf "config.doubleOptIn.confirmationTemplate and config.doubleOptIn.existingConfigMap (%s) are both set: the confirmation template comes from one of them" $d.existingConfigMap) }}
{{- else if and $d.confirmationTemplate (not (contains "confirm_url" $d.confirmationTemplate)) }}
{{- $problems = append $problems "config.doubleOptIn.confirmationTemplate never shows {{ confirm_url }}: nobody could confirm (the dispatcher would refuse to start)" }}
{{- end }}
{{- $chartSettings := include "healingwork.chartSettings" . | fromYaml }}
{{- range $name := keys $c.extraEnv | sortAlpha }}
{{- if hasKey $chartSettings $name }}
{{- $problems = append $problems (printf "config.extraEnv.%s: the chart sets %s from %s; set that instead" $name $name (get $chartSettings $name)) }}
{{- end }}
{{- end }}
{{- if $problems }}
{{- fail (printf "\n\nhealingwork: invalid values:\n  - %s\n" (join "\n  - " $problems)) }}
{{- end }}
{{- end }}

{{/* The /tmp emptyDir every container writes to (the root filesystem is read-only). */}}
{{- define "healingwork.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}

{{- define "healingwork.tmpVolumeMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* An env entry read from the release Secret (or the existing one). */}}
{{- define "healingwork.secretEnv" -}}
- name: {{ .key }}
  valueFrom:
    secretKeyRef:
      name: {{ include "healingwork.secretName" .root }}
      key: {{ .key }}
{{- end }}

{{/*
A Deployment of one long-running command. Parameters: root (the chart context), component (its name and
the `healingwork` sub-command), values (its block of values), secretKeys (the secret settings it reads),
ports, env, probes, lifecycle and strategy (YAML fragments), serviceAccountName (only for a process that
calls the Kubernetes API), and optionally annotations, volumes and volumeMounts (YAML fragments added to
the pod's own).
*/}}
{{- define "healingwork.deployment" -}}
{{- $root := .root -}}
{{- $values := .values -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "healingwork.componentName" (dict "root" $root "component" .component) }}
  labels:
    {{- include "healingwork.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  {{- /* Under an HPA the Deployment leaves the replica count alone, so an upgrade never resets it. */}}
  {{- if not (and $values.autoscaling $values.autoscaling.enabled) }}
  replicas: {{ $values.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  {{- with .strategy }}
  strategy:
    {{- . | nindent 4 }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "healingwork.selectorLabels" $root | nindent 6 }}
      app.kubernetes.io/component: {{ .component }}
  template:
    metadata:
      labels:
        {{- include "healingwork.labels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ .component }}
      annotations:
        # Settings are read once at start-up: a changed ConfigMap or Secret must roll the pods.
        checksum/config: {{ include "healingwork.configData" $root | sha256sum }}
        {{- if not $root.Values.secrets.existingSecret }}
        checksum/secret: {{ $root.Values.secrets | toJson | sha256sum }}
        {{- end }}
        {{- with .annotations }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- with $values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if .serviceAccountName }}
      # The operator watches and patches Sequences: it needs its ServiceAccount's token.
      serviceAccountName: {{ .serviceAccountName }}
      automountServiceAccountToken: true
      {{- else }}
      # The services never call the Kubernetes API.
      automountServiceAccountToken: false
      {{- end }}
      # Service links would inject variables such as KAFKA_PORT that nothing here reads.
      enableServiceLinks: false
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      terminationGracePeriodSeconds: 30
      containers:
        - name: {{ .component }}
          image: {{ include "healingwork.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: [{{ .component | quote }}]
          {{- with .ports }}
          ports:
            {{- . | nindent 12 }}
          {{- end }}
          envFrom:
            - configMapRef:
                name: {{ include "healingwork.fullname" $root }}
          env:
            {{- range .secretKeys }}
            {{- include "healingwork.secretEnv" (dict "root" $root "key" .) | nindent 12 }}
            {{- end }}
            {{- with .env }}
            {{- . | nindent 12 }}
            {{- end }}
          {{- .probes | nindent 10 }}
          {{- with .lifecycle }}
          lifecycle:
            {{- . | nindent 12 }}
          {{- end }}
          resources:
            {{- toYaml $values.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            {{- include "healingwork.tmpVolumeMount" $root | nindent 12 }}
            {{- with .volumeMounts }}
            {{- . | nindent 12 }}
            {{- end }}
      volumes:
        {{- include "healingwork.tmpVolume" $root | nindent 8 }}
        {{- with .volumes }}
        {{- . | nindent 8 }}
        {{- end }}
      {{- with $values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}

{{/*
Probes of a process serving /healthz (liveness) and /readyz (readiness) on the named port. The startup
probe gives a slow start (PostgreSQL or Kafka not yet answering) a minute before liveness counts.
*/}}
{{- define "healingwork.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: {{ . }}
  periodSeconds: 2
  failureThreshold: 30
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ . }}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ . }}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 3
{{- end }}

{{/* The operator's ServiceAccount (and Role) name. */}}
{{- define "healingwork.operatorServiceAccount" -}}
{{- include "healingwork.componentName" (dict "root" . "component" "operator") }}
{{- end }}

{{/* OPERATOR_NAMESPACES: empty (every namespace) when cluster-wide, else the watched namespaces, the
release namespace by default. */}}
{{- define "healingwork.operatorNamespaces" -}}
{{- if not .Values.operator.clusterWide }}
{{- join "," (default (list .Release.Namespace) .Values.operator.watchNamespaces) }}
{{- end }}
{{- end }}
