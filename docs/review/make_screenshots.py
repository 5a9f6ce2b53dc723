"""Regenerate the pictures of docs/review/README.md: two heatmaps (a 60 x 90 thumbnail, a 4000 x 3000 photo) and the
review page of a small run, scored by a random-weight spai-tiny (see _spread) through the one inference path
(the attention is that model's output; the verdicts mean nothing), screenshotted in headless Chromium. A PNG over the
repository's 300 KB per picture is reduced to a 256-colour palette.

    .venv/bin/python docs/review/make_screenshots.py
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent
SAMPLES = ROOT.parent / "shared" / "data" / "samples"


def _photos(directory: Path) -> list[Path]:
    from spai.data.samples import write_sample_images
    from spai.infer.images import list_images

    photos = write_sample_images(directory / "generated")
    return photos + (list_images(SAMPLES) if SAMPLES.is_dir() else [])


def _sized(source: Path, size: tuple[int, int], path: Path) -> Path:
    with Image.open(source) as im:
        im.convert("RGB").resize(size, Image.Resampling.LANCZOS).save(path, quality=92)
    return path


def main() -> None:
    import torch

    import spai
    from spai.corpus.writers import open_score_writer
    from spai.review.heatmaps import save_heatmap
    from spai.review.report import html_report_from_scores

    torch.manual_seed(0)
    model = spai.create_model("spai-tiny")
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        photos = _photos(run)
        _spread(model, photos)
        small = _sized(photos[-1], (90, 60), run / "thumbnail_60x90.jpg")
        large = _sized(photos[-1], (4000, 3000), run / "photo_4000x3000.jpg")
        for path, name in [(small, "heatmap-small.png"), (large, "heatmap-large.png")]:
            (score,) = model.score_images([path])
            save_heatmap(path, score.attention, OUT / name, probability=score.probability,
                         decision=score.decision, operating_point=score.operating_point, threshold=0.5)
            _palette(OUT / name)
        os.chdir(run)
        names = [os.path.relpath(p, run) for p in photos]
        scores = _score_all(model, names)
        (run / "heatmaps").mkdir()
        for s in scores:
            if not s.error:
                save_heatmap(s.image, s.attention, run / "heatmaps" / f"{Path(s.image).stem}.heatmap.png",
                             probability=s.probability, decision=s.decision, operating_point=s.operating_point)
        Path(names[1]).unlink()  # a file gone since it was scored
        with open_score_writer(run / "scores.csv", resume=False) as writer:
            for s in scores:
                writer.write(s)
        html_report_from_scores("scores.csv", "report.html", heatmaps="heatmaps")
        _screenshot(run / "report.html", OUT / "report.png")


def _spread(model, photos: list[Path]) -> None:
    """Random weights give a near-even attention and one probability for every image: scale the aggregator's
    query and the head, and centre the logits on these photos, so that the pictures show the colour scale and
    both decisions. The numbers still mean nothing."""
    import numpy as np
    import torch

    with torch.no_grad():
        model.patch_aggregator.mul_(3000)
        model.cls_head.head[6].weight.mul_(400)
        centre = float(np.median([s.logit for s in model.score_images(photos)]))
        model.cls_head.head[6].bias.sub_(centre)


def _score_all(model, names: list[str]):
    """One score per file; a file that fails gets its error row, as ``spai predict`` writes it."""
    from spai.errors import SPAIError
    from spai.infer.scores import ImageScore

    Path("not_an_image.jpg").write_bytes(b"this is not a JPEG")
    out = []
    for name in [*names, "not_an_image.jpg"]:
        try:
            out += model.score_images([name])
        except SPAIError as e:
            out.append(ImageScore(name, error=str(e)))
    return out


def _screenshot(page: Path, out: Path) -> None:
    spec = importlib.util.spec_from_file_location("chromium", ROOT / "tests" / "spai" / "chromium.py")
    chromium = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(chromium)  # type: ignore[union-attr]
    with chromium.Chromium(1280, 1500) as browser:
        tab = browser.page()
        tab.navigate(page.as_uri())
        tab.click("#tbody tr.row")  # open the first row: its heatmap, on demand
        tab.evaluate("new Promise(r => setTimeout(r, 500))")
        tab.evaluate("window.scrollTo(0, 0)")
        out.write_bytes(tab.screenshot())
    _palette(out)


def _palette(path: Path, limit: int = 300_000) -> None:
    """Over the limit only: 256 colours, dithered (smooth colour bars)."""
    if path.stat().st_size <= limit:
        return
    with Image.open(path) as im:
        small = im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
    small.save(path, optimize=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
