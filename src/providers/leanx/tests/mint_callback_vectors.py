# Independent test vectors for tally's callback verification (PyJWT + hashlib), run once;
# their output is pinned in callback.rs beside this file (leanx) and in luxtak/tests/callback.rs.
import jwt, json, hashlib
KEY = "lx-hash-key-5f2b8c1e9a7d"
claims = {
  "output": {"invoice_no": "PAYOUT-A9D5:174307-LEANX", "error_description": [],
             "bank_response": {"Success": True, "Result": {"OrgnCurrency": "MYR", "OrgnTransactionAmount": "1.0", "PaymentStatus": "ACSP"}}},
  "client_data": {"virtual_pool_reference": "VA-F04EC4-164712020277-PAYOUT", "external_invoice_ref": "INVOICE1234", "recipient_reference": "rent"},
  "invoice_status_id": 2,
  "invoice_status": "SUCCESS",
  "amount": "1234567890123.45",
  "payout_service_id": 1,
  "client_callback_url": "https://tally.example/callbacks/leanx-main",
  "payout_payment": {"item": {"balance": "7.00", "virtual_pool_reference": "VA-F04EC4-164712020277-PAYOUT",
                              "created_at": "2024-09-04T14:49:48Z", "updated_at": "2024-09-04T14:50:05Z"}},
}
print("KEY", KEY)
print("HS256", jwt.encode(claims, KEY, algorithm="HS256", headers={"typ": "JWT"}))
print("HS512", jwt.encode(claims, KEY, algorithm="HS512"))
print("NONE", jwt.encode(claims, None, algorithm="none"))
print("EXP", jwt.encode(dict(claims, exp=1725461000), KEY, algorithm="HS256"))  # 2024-09-04T14:43:20Z
no_status = {k: v for k, v in claims.items() if k != "invoice_status"}
print("NO_STATUS", jwt.encode(no_status, KEY, algorithm="HS256"))
print("BAD_AMOUNT", jwt.encode(dict(claims, amount="not-a-number"), KEY, algorithm="HS256"))
# Luxtak notification: plain SHA-256 over the non-empty params sorted k=v&... + app_key.
APP_KEY = "lt-app-key-9c4e2a71"
body = '{"payoutId":"TS2409041449480001","custom_code":"ORDER-77","status":"PAID","msg":"","timestamp":1725461388}'
params = json.loads(body)
joined = "&".join(f"{k}={params[k]}" for k in sorted(params) if params[k] not in ("", None))
print("LUX_BODY", body)
print("LUX_JOINED", joined)
print("LUX_SIG", hashlib.sha256((joined + APP_KEY).encode()).hexdigest())
body2 = '{"payoutId":"TS2409041449480002","custom_code":"ORDER-78","status":"REJECTED","msg":"Invalid PIX Key","timestamp":"1725461390"}'
p2 = json.loads(body2)
j2 = "&".join(f"{k}={p2[k]}" for k in sorted(p2) if p2[k] not in ("", None))
print("LUX_BODY2", body2)
print("LUX_JOINED2", j2)
print("LUX_SIG2", hashlib.sha256((j2 + APP_KEY).encode()).hexdigest())
