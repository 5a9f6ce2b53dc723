"""Foreign checkpoint formats (upstream SPAI, the fusion fork, bare CLIP weights): see issue 7."""
