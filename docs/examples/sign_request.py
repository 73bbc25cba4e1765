import hashlib, hmac, secrets, sys, time, urllib.parse, urllib.request
def signed_headers(client_id, key_id, secret, method, path, query, body, now=None, nonce=None):
    t, nonce, quote = str(int(now or time.time())), nonce or secrets.token_urlsafe(16), urllib.parse.quote
    pairs = sorted(urllib.parse.parse_qsl(query, keep_blank_values=True))
    lines = ["HW-HMAC-SHA256-V2", method.upper(), path, "&".join(f"{quote(k, '-_.~')}={quote(v, '-_.~')}" for k, v in pairs),
             hashlib.sha256(body).hexdigest(), t, nonce, client_id, key_id]
    signature = hmac.new(secret.encode(), "\n".join(lines).encode(), hashlib.sha256).hexdigest()
    return {"X-Client-Id": client_id, "X-Signature": f"keyid={key_id},t={t},nonce={nonce},v2={signature}"}

if __name__ == "__main__":  # sign_request.py BASE_URL CLIENT_ID KEY_ID SECRET METHOD PATH[?QUERY] [BODY]
    base_url, client_id, key_id, secret, method, target, *rest = sys.argv[1:]
    body, (path, _, query) = (rest[0].encode() if rest else b""), target.partition("?")
    headers = {**signed_headers(client_id, key_id, secret, method, path, query, body), "Content-Type": "application/json"}
    with urllib.request.urlopen(urllib.request.Request(base_url + target, body or None, headers, method=method)) as r:
        print(r.status, r.read().decode())
