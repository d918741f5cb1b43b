"""Outbound DKIM signing (RFC 6376, 8463), signing keys, and ARC sealing (RFC 8617).

The pipeline uses::

    signer = Signer.from_config(config)        # SigningConfigError names an unusable key file
    outcome = signer.signatures(message)       # our DKIM-Signature field(s), or why none

    sealer = ArcSealer.from_config(config)     # [signing.arc]; SigningConfigError if unset
    outcome = sealer.seal_fields(message, authres_value, verdict.arc, bodies=body_hashes)

Both take the parsed message (and the body hashes the verifier computed) and return header
fields; ``sign_message`` / ``seal_message`` give the whole message, for the CLI and tests.

On SIGHUP build new ones from the reloaded config and swap them in (keep the old ones if
building fails).
"""
from .arc_seal import ArcSealer, SealOutcome
from .dkim_sign import HeaderPolicy, Signer, SigningOutcome
from .keys import SigningConfigError, SigningKey

__all__ = ["ArcSealer", "HeaderPolicy", "SealOutcome", "Signer", "SigningConfigError",
           "SigningKey", "SigningOutcome"]
