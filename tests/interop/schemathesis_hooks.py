"""schemathesis hooks for tests/interop/schemathesis.sh (loaded through SCHEMATHESIS_HOOKS).

A few request rules depend on the server's configuration or on decoded content, which a JSON
Schema cannot state; api/openapi.yaml states them in prose. For requests schemathesis
generates as *valid* (positive mode), these hooks make just those values realistic, so the
positive_data_acceptance check still tests everything the schema does state:

- `class` names a configured traffic class: a valid class string becomes "transactional"
  (configured in the test's sealpost.toml).
- `POST /v1/messages/raw`: the decoded `message` must be free of NUL and start with a header
  section: NULs are dropped and a header field is put in front.
- `POST /v1/webhooks`: the test server allows webhook URLs on 127.0.0.1 only (`[events]
  webhook_allowed_hosts`), and a URL must parse (which the schema's pattern only
  approximates): a valid `url` becomes http://127.0.0.1:9/hook (nothing listens there).
- The OAuth endpoints refuse client credentials in the body when the Authorization header
  carries them too (RFC 6749 §2.3); the run authenticates with Basic, so `client_id` and
  `client_secret` are dropped from the form.

Negative (invalid) requests are never touched.
"""

import base64
import binascii

import schemathesis


def _is_negative(case):
    meta = getattr(case, "meta", None)
    return meta is not None and meta.generation.mode.is_negative


@schemathesis.hook
def before_call(context, case, kwargs):
    if _is_negative(case) or not isinstance(case.body, dict):
        return
    path = case.operation.path
    body = dict(case.body)
    if path in ("/v1/messages", "/v1/messages/raw") and isinstance(body.get("class"), str):
        body["class"] = "transactional"
    if path == "/v1/messages/raw" and isinstance(body.get("message"), str):
        try:
            raw = base64.b64decode(body["message"].strip(" \t\n\r\f"), validate=True)
        except (binascii.Error, ValueError):
            raw = None
        if raw is not None:
            raw = b"Subject: schemathesis\r\n\r\n" + raw.replace(b"\0", b"")
            body["message"] = base64.b64encode(raw).decode()
    if path == "/v1/webhooks" and isinstance(body.get("url"), str):
        body["url"] = "http://127.0.0.1:9/hook"
    if path in ("/oauth/token", "/oauth/revoke"):
        body.pop("client_id", None)
        body.pop("client_secret", None)
    case.body = body
