"""authfilter: SPF, DKIM, ARC and DMARC for Postfix, as a pre-queue SMTP proxy."""
__version__ = "0.1.0"
