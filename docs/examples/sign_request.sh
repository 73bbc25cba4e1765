#!/bin/sh
# sign_request.sh BASE_URL CLIENT_ID KEY_ID SECRET METHOD PATH [CANONICAL_QUERY] [BODY]
# CANONICAL_QUERY: name=value pairs sorted, RFC 3986 percent-encoded (email=ada%40example.com).
set -eu
url=$1 client=$2 keyid=$3 secret=$4 method=$5 path=$6 query=${7:-} body=${8:-}
t=$(date +%s) nonce=$(openssl rand -hex 16)
digest=$(printf '%s' "$body" | openssl dgst -sha256 -r | cut -d' ' -f1)
signature=$(printf 'HW-HMAC-SHA256-V2\n%s\n%s\n%s\n%s\n%s\n%s\n%s\n%s' "$method" "$path" "$query" \
  "$digest" "$t" "$nonce" "$client" "$keyid" | openssl dgst -sha256 -hmac "$secret" -r | cut -d' ' -f1)
printf '%s' "$body" | curl -sS -X "$method" "$url$path${query:+?$query}" --data-binary @- \
  -H "X-Client-Id: $client" -H "X-Signature: keyid=$keyid,t=$t,nonce=$nonce,v2=$signature" \
  -H 'Content-Type: application/json' -w '\n%{http_code}\n'
