"""Scoring images, the one inference path: decoding with limits (:mod:`.images`), preparing images and their
limits (:mod:`.prepare`), patch feeds (:mod:`.feeds`), the :class:`.scorer.Scorer`, the runners every backend
shares (:mod:`.runners`), the routes by name and by evidence (:mod:`.routes`, :mod:`.cpu`, :mod:`.evidence`), the
score of one image (:mod:`.scores`), the parity comparator (:mod:`.parity`) and the scoring job that opens a
scorer (:mod:`.job`). Light: no torch at import time."""
