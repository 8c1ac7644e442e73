"""Public keys as cosign writes them (`cosign generate-key-pair`, or any PEM
public key): ECDSA (P-256 and up), RSA, Ed25519; and the one signature check."""
from __future__ import annotations

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
_HASH = {"secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384, "secp521r1": hashes.SHA512}


def load_public_key(pem: bytes) -> PublicKey:
    """A key from its PEM; ValueError saying why for anything else."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise ValueError(f"not a PEM public key ({str(e).splitlines()[0] if str(e) else 'unreadable'})") \
            from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _HASH:
            raise ValueError(f"ECDSA curve {key.curve.name} is not one cosign signs with")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ValueError(f"an RSA key of {key.key_size} bits is too weak (2048 at least)")
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise ValueError(f"{type(key).__name__} keys are not supported (ECDSA, RSA or Ed25519)")


def verifies(key: PublicKey, message: bytes, signature: bytes) -> bool:
    """Whether `signature` is the key's over `message`, as sigstore signs: ECDSA with
    the curve's hash (DER), RSA PKCS#1 v1.5 or PSS with SHA-256, Ed25519 over the
    message itself."""
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            try:
                key.verify(signature, message, ec.ECDSA(_HASH[key.curve.name]()))
            except InvalidSignature:
                # cosign signs with SHA-256 whatever the curve, unless told otherwise.
                if key.curve.name == "secp256r1":
                    raise
                key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            try:
                key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
            except InvalidSignature:
                key.verify(signature, message,
                           padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                       salt_length=padding.PSS.AUTO), hashes.SHA256())
        else:
            key.verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True

