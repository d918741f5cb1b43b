"""The checks: one module per method (spf, dkim, arc, dmarc).

Each is pure logic over the session facts, the parsed message and a Resolver, returning the
typed results of :mod:`authfilter.results`; :mod:`authfilter.engine` runs them together.
"""
