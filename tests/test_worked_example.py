"""The README's worked example, step by step as a new user types it: photos annotated in labelme -> import ->
data check -> train from an ImageNet backbone by name -> eval report -> predict. The photos are scikit-image's
samples; the labelme files are written here as labelme writes them; the ImageNet file is planted in a temporary
torch hub cache (random weights of the right shapes under the enum's file name)."""
import json

import numpy as np
import torch
import torchvision
from PIL import Image
from skimage import data as samples

from seglab import hub
from seglab.cli import main

# photo, its label and a polygon around the subject (fractions of the photo's width and height)
PHOTOS = {
    "astronaut": ("person", [(0.25, 0.2), (0.7, 0.15), (0.85, 1.0), (0.15, 1.0)]),
    "coffee": ("cup", [(0.1, 0.1), (0.7, 0.1), (0.75, 0.8), (0.15, 0.85)]),
    "chelsea": ("cat", [(0.2, 0.05), (0.8, 0.1), (0.9, 0.95), (0.1, 0.9)]),
}
SIZE = (72, 56)  # (W, H) the photos are saved at: small enough for a CPU test


def labelme_folder(root):
    """``root`` with one photo and one labelme json (a polygon, and a point on the background) per sample."""
    root.mkdir()
    for name, (label, polygon) in PHOTOS.items():
        Image.fromarray(getattr(samples, name)()).convert("RGB").resize(SIZE).save(root / f"{name}.jpg")
        points = [[x * SIZE[0], y * SIZE[1]] for x, y in polygon]
        shapes = [{"label": label, "points": points, "group_id": None, "shape_type": "polygon", "flags": {}}]
        (root / f"{name}.json").write_text(json.dumps({
            "version": "5.2.1", "flags": {}, "shapes": shapes, "imagePath": f"{name}.jpg", "imageData": None,
            "imageHeight": SIZE[1], "imageWidth": SIZE[0]}))


def test_labelme_photos_to_a_trained_model_its_report_and_predictions(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    resnet = hub.weights("resnet50", "IMAGENET1K_V2")
    hub.cache_path(resnet).parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), hub.cache_path(resnet))
    labelme_folder(tmp_path / "photos")
    ds, run = tmp_path / "dataset", tmp_path / "runs" / "mine"

    main(["data", "import", "labelme", str(tmp_path / "photos"), "--out", str(ds)])
    assert (ds / "classes.txt").read_text().split() == ["background", "cat", "cup", "person"]
    main(["data", "check", str(ds), "--format", "folder"])
    checked = capsys.readouterr().out
    assert "3 images" in checked and "person" in checked
    mask = np.array(Image.open(ds / "masks" / "astronaut.png"))
    assert set(np.unique(mask)) == {0, 3}  # background and person, ids as in classes.txt

    main(["train", "--model", "deeplabv3_resnet50", "--backbone-weights", "IMAGENET1K_V2", "--data", "folder",
          "--data-root", str(ds), "--train-split", "all", "--val-split", "all", "--crop-size", "48",
          "--iters", "2", "--batch-size", "2", "--out", str(run)])
    assert (run / "best.pt").is_file() and (run / "eval" / "report.html").is_file()
    main(["eval", "--checkpoint", str(run), "--data", "folder", "--data-root", str(ds), "--split", "all",
          "--out", str(tmp_path / "eval")])
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(report["iou"]) == {"background", "cat", "cup", "person"}
    main(["predict", "--checkpoint", str(run), *map(str, sorted((tmp_path / "photos").glob("*.jpg"))),
          "--out", str(tmp_path / "predictions")])
    for name in PHOTOS:
        predicted = Image.open(tmp_path / "predictions" / f"{name}.png")
        assert predicted.size == SIZE and np.array(predicted).max() < 4
        assert (tmp_path / "predictions" / f"{name}_overlay.png").is_file()

