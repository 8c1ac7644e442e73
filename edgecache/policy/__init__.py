"""Edge signature policy: which images must be signed, and by whom (rules.py);
cosign signatures checked with `cryptography` (keys.py, cosign.py); the
signatures found through the pull path (signatures.py)."""
