"""One sample of each credential format the shared redactor covers, for the
tests that push them through the real paths (events, logs, reports)."""

from __future__ import annotations

# One sample of each credential format; none may be stored, logged or reported.
SECRETS = {
    "openai": "sk-" + "A1b2C3d4" * 6,
    "openai_project": "sk-proj-" + "Zx9_Yw8-" * 6,
    "anthropic": "sk-ant-api03-" + "Qq7Rr8Ss" * 8,
    "github_classic": "ghp_" + "a1B2c3D4e5" * 4,
    "github_oauth": "gho_" + "Z9y8X7w6V5" * 4,
    "github_fine_grained": "github_pat_11ABCDEFG0" + "x1Y2z3" * 10,
    "slack": "xoxb-123456789012-1234567890123-" + "AbCdEf1234" * 2,
    "aws_access_key_id": "AKIA" + "Q2W3E4R5T6Y7U8I9",
    "google": "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "gitlab": "glpat-" + "Ab3_Cd4-Ef" * 2,
    "hugging_face": "hf_" + "AbCdEfGhIj" * 3 + "Kl1234",
    "npm": "npm_" + "A1b2C3d4E5f6" * 3,
}
# Shapeless secrets, recognised by the name they come with.
NAMED = {
    "aws_secret": ("AWS_SECRET_ACCESS_KEY=", "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY40"),
    "password": ("password=", "hunter2-Very-Secret"),
    "bearer": ("Authorization: Bearer ", "opaque.bearer.token-value-123"),
    # A password in a URL's user part: database URLs, git remotes in cargo's errors.
    "url_database": ("postgresql+psycopg://speckit:", "Db-Pa55word-9f3e@db.internal:5432/speckit"),
    "url_git": ("https://oauth2:", "Gl0paqueRemoteTok3n@gitlab.example.com/group/crate.git"),
    "pem": (
        "-----BEGIN RSA PRIVATE KEY-----\n",
        "MIIEowIBAAKCAQEAx2nH7kq3\n-----END RSA PRIVATE KEY-----",
    ),
}
TEXT = " ; ".join([f"{k} {v}" for k, v in SECRETS.items()] + [f"{p}{v}" for p, v in NAMED.values()])
NEEDLES = [*SECRETS.values(), *(v.splitlines()[0].split("@")[0] for _, v in NAMED.values())]
