"""Stage 3: stream records from the shards into training.

``partition`` decides who reads what (pure functions), ``records`` reads the records in that order
(the record stream), ``dataset`` is the official ``BIOSCAN5M`` API on top of it, ``loader`` and
``columnar`` make tensor batches for training (``make_loader``), whose workers run as DataLoader
processes or as threads (``workers``). ``collate`` makes the same batches from ``datasets``' own
streaming (``BatchCollate``, a ``collate_fn``).
"""
