"""``seglab eval`` on other data than the checkpoint's: class lists must agree name by name, the training data's
own options (Shapes count and size, reader options) stay with it, and metrics.json is strict JSON."""
import json

import numpy as np
import pytest
from PIL import Image

from seglab.cli import main
from seglab.data import Shapes
from seglab.engine.config import TrainConfig
from seglab.engine.evaluate import evaluation_setup
from seglab.engine.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 5-class Shapes run trained with --num-val 2 (which only Shapes takes)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    train(TrainConfig(model="fcn8s_vgg16", width_mult=0.0625, data="shapes", image_size=32, num_train=4, num_val=2,
                      iters=1, batch_size=2, out=str(out)))
    return out


def folder(root, classes, labels=(0, 1, 2)):
    """A folder dataset of three 24x32 photos whose masks hold only ``labels``, with ``classes.txt``."""
    rng = np.random.default_rng(0)
    for name in ("images", "masks"):
        (root / name).mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(root / "images" / f"p{i}.png")
        Image.fromarray(rng.choice(labels, (24, 32)).astype(np.uint8)).save(root / "masks" / f"p{i}.png")
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def run_eval(capsys, *argv):
    """(exit code, stdout, stderr) of ``seglab eval ARGV`` in this process."""
    try:
        main(["eval", *map(str, argv)])
        code = 0
    except SystemExit as error:
        code = error.code
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_on_a_folder_with_other_classes_is_refused_naming_both_lists(run, tmp_path, capsys):
    data = folder(tmp_path / "pets", ["background", "cat", "dog"])
    code, _, err = run_eval(capsys, "--checkpoint", run, "--data", "folder", "--data-root", data, "--split", "all",
                            "--out", tmp_path / "eval")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert f"{run / 'best.pt'} was trained on the classes background, circle, square, triangle, star (5), split " \
           f"'all' of folder under {data} has background, cat, dog (3): its scores would go under the wrong " \
           "names" in err
    assert not (tmp_path / "eval").exists()
    renamed = folder(tmp_path / "renamed", ["background", "square", "circle", "triangle", "star"])  # same count
    code, _, err = run_eval(capsys, "--checkpoint", run, "--data", "folder", "--data-root", renamed, "--split",
                            "all", "--out", tmp_path / "eval")
    assert code == 1 and "has background, square, circle, triangle, star (5)" in err


def test_eval_on_a_folder_with_the_models_classes_ignores_the_shapes_only_options_and_writes_strict_json(
        run, tmp_path, capsys):
    data = folder(tmp_path / "shapes_photos", Shapes.classes, labels=(0, 1, 2))  # no square, no star pixels
    code, out, err = run_eval(capsys, "--checkpoint", run, "--data", "folder", "--data-root", data, "--split", "all",
                              "--out", tmp_path / "eval")
    assert code == 0, err
    assert "num_images" not in err and "wrote" in out  # --num-val 2 of the Shapes run did not follow

    def strict(constant):
        raise ValueError(f"metrics.json holds {constant}, which strict JSON parsers reject")

    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text(), parse_constant=strict)
    assert metrics["iou"]["star"] is None and metrics["recall"]["star"] is None  # no star pixels: n/a, not 0
    assert isinstance(metrics["miou"], float) and list(metrics["iou"]) == list(Shapes.classes)


@pytest.mark.parametrize("data", [None, "shapes"])
def test_eval_on_the_training_data_keeps_its_options(run, data):
    _, _, dataset, _ = evaluation_setup(run, data=data)
    assert len(dataset) == 2 and tuple(dataset[0][0].shape) == (3, 32, 32)  # --num-val 2, --image-size 32
