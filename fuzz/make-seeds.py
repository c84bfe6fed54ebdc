#!/usr/bin/env python3
"""Writes the seed corpus (fuzz/corpus/<target>/) that `make fuzz` starts from and `make test`
replays. Tokens are signed with the fuzzing secrets at the fuzzing clock of
`etls_proxy::fuzzing` (src/fuzzing.rs), so they keep the same meaning on any day."""
import base64, hashlib, hmac, json, os, pathlib

ACCESS = b"fuzz-access-secret-fuzz-access-01"
REFRESH = b"fuzz-refresh-secret-fuzz-refresh1"
NOW = 1_800_000_000
ROOT = pathlib.Path(__file__).parent / "corpus"


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jwt(secret: bytes, claims, alg="HS256", header=None) -> str:
    head = b64(json.dumps(header or {"alg": alg, "typ": "JWT"}).encode())
    body = b64(claims.encode() if isinstance(claims, str) else json.dumps(claims).encode())
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    sig = b64(hmac.new(secret, f"{head}.{body}".encode(), digest).digest())
    return f"{head}.{body}.{sig}"


def write(target: str, seeds: dict):
    folder = ROOT / target
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in seeds.items():
        (folder / name).write_bytes(data if isinstance(data, bytes) else data.encode())


valid = jwt(ACCESS, {"username": "ann", "exp": NOW + 600})
due = jwt(ACCESS, {"username": "ann", "exp": NOW + 30})
expired = jwt(ACCESS, {"username": "ann", "exp": NOW - 5})
refresh = jwt(REFRESH, {"username": "ann", "exp": NOW + 3600})
h, p, s = valid.split(".")
NONE_HEADER = b64(b'{"alg":"none"}')

write("cookie_header", {
    "one": "sid=1; accessTokenEtls=a.b.c; refreshTokenEtls=r; theme=dark",
    "crumbs": "accessTokenEtls=a\nrefreshToken=rt\nsid=1",
    "dups": "accessTokenEtls=x; accessTokenEtls=y; refreshToken=1; refreshToken=2",
    "odd": "=v; a=; b; c=d=e;; ; \t f = g ;accessTokenEtls",
    "bytes": b"\x01a=\xc3\xa9; b=\xff\xfe; c=\"q\"",
    "many": "; ".join(f"c{i}=v{i}" for i in range(200)),
})
write("auth_answer", {
    "seed002": json.dumps({"accessToken": "api-a", "refreshToken": "api-r", "userData": {"id": 7, "role": "admin"}}),
    "seed000": "0" + json.dumps({"newAccessToken": "a", "newRefreshToken": "r", "newEtlsUser": "user.jwt.x"}),
    "nouser": "n" + json.dumps({"accessToken": "a", "refreshToken": "r"}),
    "crlf": json.dumps({"accessToken": "a\r\nSet-Cookie: x=1", "refreshToken": "r", "userData": {}}),
    "exp-in-user": json.dumps({"accessToken": "a", "refreshToken": "r", "userData": {"exp": "soon", "nbf": 1}}),
    "long": json.dumps({"accessToken": "a" * 4097, "refreshToken": "r", "userData": {}}),
    "types": json.dumps({"accessToken": 1, "refreshToken": None, "userData": []}),
})
write("decision", {
    "valid": f"/dashboard\naccessTokenEtls={valid}; refreshTokenEtls={refresh}; refreshToken=rt",
    "due": f"/\naccessTokenEtls={due}; refreshTokenEtls={refresh}; refreshToken=rt",
    "expired": f"/a?b=c\naccessTokenEtls={expired}; refreshTokenEtls={refresh}; refreshToken=rt",
    "crumbs": f"/\naccessTokenEtls={expired}\nrefreshTokenEtls={refresh}\nrefreshToken=rt",
    "dups": f"/\naccessTokenEtls=bad; accessTokenEtls={valid}",
    "tampered": f"/\naccessTokenEtls={h}.{b64(json.dumps({'username': 'admin', 'exp': NOW + 600}).encode())}.{s}",
    "none": f"/\naccessTokenEtls={NONE_HEADER}.{p}.",
    "hs512": f"/\naccessTokenEtls={jwt(ACCESS, {'exp': NOW + 600}, 'HS512')}",
    "segments": f"/\naccessTokenEtls={h}.{p}; refreshTokenEtls={h}.{p}.{s}.{s}",
    "claims": f"/\naccessTokenEtls={jwt(ACCESS, {'exp': '1e30', 'nbf': NOW + 5})}; refreshTokenEtls={jwt(REFRESH, {'exp': -1})}",
    "kid": f"/\naccessTokenEtls={jwt(ACCESS, {'exp': NOW + 600}, header={'alg': 'HS256', 'kid': 'x'})}",
    "public": "/_next/static/%2e%2e/dashboard\n",
    "backslash": "/_next/static/..\\dashboard\n",
})
conf = (pathlib.Path(__file__).parent.parent / "conf" / "etls-proxy.yaml").read_text()
write("config", {
    "shipped": conf,
    "minimal": "listen: ['127.0.0.1:8080']\nupstream: {address: '127.0.0.1:3000'}\n",
    "bad": "listen: []\nupstream: {address: 'http://x'}\nauth_api: {refresh_url: 'ftp://a', timeout_ms: 0}\ntokens: {access_ttl_secs: 0}\ncookies: {same_site: Strict, secure: false}\n",
    "unknown": "lisen: x\n",
    "types": "refresh: {max_entries: -1, grace_secs: 1e9}\n",
})
