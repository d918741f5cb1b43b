"""DMARC reporting: every evaluation becomes a row in a durable store, and aggregate reports
(RFC 9990) are built from the rows and mailed to the ``rua`` addresses.

* :mod:`.rows` turns a :class:`~authfilter.results.Verdict` into one row (the recording cost in
  the SMTP path is this and a deque append);
* :mod:`.recorder` buffers rows and writes them in batches from a background thread;
* :mod:`.store`, :mod:`.sqlite`, :mod:`.postgres`: the store, schema created and upgraded here;
  :mod:`.backends` opens the one a URL names;
* :mod:`.aggregate` groups rows into reports and writes the XML;
* :mod:`.destinations` reads ``rua`` URIs and checks external destinations (RFC 9990
  "Verifying External Destinations");
* :mod:`.sender` mails reports through a relay, each exactly once across nodes;
* :mod:`.failure` sends failure reports (RFC 9991, AFRF) to ``ruf`` addresses when
  ``reports.failure_enabled`` is on: rate-limited, redacted, best effort.
"""
