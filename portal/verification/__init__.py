"""The verification engine: is this API key usable right now, and one usage row for every answer.

No Flask here. The HTTP layer (:mod:`portal.api`) builds one :class:`~portal.verification.verifier.Verifier`
per process with :func:`~portal.verification.verifier.build_verifier` and calls
``verify(candidate, endpoint, started)``; a stopping worker calls ``close()``, which flushes the buffered usage
rows. Modules: ``outcomes`` (answers), ``verifier`` (the interface), ``backend`` (the grouped statement),
``usage_writer`` (buffered usage rows), ``sql`` (the statements). docs/architecture.md draws the flow and
docs/performance.md has the numbers behind the design.
"""
