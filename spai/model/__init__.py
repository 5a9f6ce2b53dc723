"""What a SPAI model is, and nothing of how it is deployed: its config (:mod:`.config`), the patch grid it cuts
(:mod:`.patching`), the tensor spec of its two deployed graphs (:mod:`.specs`), its calibration (:mod:`.calibration`),
its checkpoint files (:mod:`.checkpoint`), the one factory (:mod:`.factory`: ``spai.create_model``), the importers
of upstream SPAI and research-fork checkpoints (:mod:`.importers`) and the ``nn.Module`` s (:mod:`.nn`).

Nothing here imports :mod:`spai.infer`, :mod:`spai.corpus`, :mod:`spai.review`, ``export`` or ``serving``
(``tests/test_layers.py``).
"""
