"""Outbound DKIM signing (RFC 6376, 8463), signing keys, and ARC sealing (RFC 8617).

The SMTP proxy uses::

    signer = Signer.from_config(config)        # SigningConfigError names an unusable key file
    signed = signer.sign(raw, facts)           # DKIM-Signature(s) on top, or raw unchanged

    sealer = ArcSealer.from_config(config)     # [signing.arc]; SigningConfigError if unset
    sealed = sealer.seal(raw, authres_value, verdict.arc)

On SIGHUP build new ones from the reloaded config and swap them in (keep the old ones if
building fails).
"""
from .arc_seal import ArcSealer, SealOutcome
from .dkim_sign import HeaderPolicy, Signer, SigningOutcome
from .keys import SigningConfigError, SigningKey

__all__ = ["ArcSealer", "HeaderPolicy", "SealOutcome", "Signer", "SigningConfigError",
           "SigningKey", "SigningOutcome"]
