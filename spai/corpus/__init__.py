"""Scoring a corpus: its inputs, local or in object storage, read lazily and bounded (:mod:`.inputs`), the score
files written row by row and resumed (:mod:`.writers`), and the same scoring on a Ray Data pipeline
(:mod:`.ray_scoring`)."""
