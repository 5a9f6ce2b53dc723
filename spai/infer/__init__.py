"""Scoring images, the one inference path: decoding with limits (:mod:`.images`), preparing images and their
limits (:mod:`.prepare`), patch feeds (:mod:`.feeds`), the :class:`.scorer.Scorer`, the runners every backend
shares (:mod:`.runners`), the routes by name and by evidence (:mod:`.routes`, :mod:`.cpu`, :mod:`.evidence`), the
score of one image (:mod:`.scores`), the parity comparator (:mod:`.parity`), the scoring job and the one way to
open its scorer (:mod:`.job`), and :class:`.detector.SPAIDetector` (the model with ``score_images``: what
``spai.create_model`` returns). Light: nothing here but :mod:`.detector` imports torch at import time."""
