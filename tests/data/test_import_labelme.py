"""labelme JSON -> folder layout (and COCO instances): masks against Pillow drawn here the way labelme's
``shape_to_mask`` draws (labelme itself needs Qt to import), files against the readers that consume them."""
import base64
import io
import json
import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from seglab.cli import build_parser, main
from seglab.data import COCOInstances, FolderSegmentation, build_dataset
from seglab.data.import_labelme import import_labelme

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 41, 57
# labelme/utils/shape.py: shape_to_mask(img_shape, points, shape_type=None, line_width=10, point_size=5)
LABELME_LINE_WIDTH, LABELME_POINT_SIZE = 10, 5


def photo(height=H, width=W, seed=0, fmt="PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def png_b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8) * 255).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def shape(label, shape_type, points, group_id=None, **extra):
    return {"label": label, "points": points, "group_id": group_id, "shape_type": shape_type, "flags": {}, **extra}


def document(shapes, image=None, image_path=None, height=H, width=W):
    return {"version": "5.5.0", "flags": {}, "shapes": shapes, "imagePath": image_path,
            "imageData": base64.b64encode(image).decode("ascii") if image is not None else None,
            "imageHeight": height, "imageWidth": width}


BOX_REGION = np.random.default_rng(7).random((9, 12)) > 0.4  # the "mask" shape's box: rows 20..28, cols 40..51
EVERY_TYPE = [
    shape("cat", "polygon", [[3.2, 2.5], [30.7, 4.1], [18.4, 25.9], [5.0, 19.3]]),
    shape("dog", "rectangle", [[50.0, 30.0], [35.5, 12.2]]),  # corners in either order
    shape("cat", "circle", [[12.0, 30.0], [17.5, 34.0]]),  # centre, then a point on the circle
    shape("dog", "line", [[2.0, 38.0], [40.0, 33.0]]),
    shape("bird", "linestrip", [[45.0, 2.0], [55.0, 10.0], [47.0, 20.0]]),
    shape("bird", "point", [[28.3, 14.6]]),
    shape("dog", "mask", [[40, 20], [51, 28]], mask=png_b64(BOX_REGION)),
    shape("cat", None, [[20.0, 33.0], [26.0, 40.0], [14.0, 40.0]]),  # labelme: no shape_type = polygon
]


def drawn(shapes, class_ids, height=H, width=W) -> np.ndarray:
    """The semantic mask as labelme's shapes_to_label paints it, re-derived with Pillow: each shape in order."""
    labels = np.zeros((height, width), dtype=np.uint8)
    for s in shapes:
        canvas = Image.new("L", (width, height))
        draw = ImageDraw.Draw(canvas)
        xy = [tuple(p) for p in s["points"]]
        if s["shape_type"] == "mask":
            (x1, y1), (x2, y2) = s["points"]
            region = np.zeros((height, width), bool)
            region[y1:y2 + 1, x1:x2 + 1] = BOX_REGION
            labels[region] = class_ids[s["label"]]
            continue
        if s["shape_type"] == "circle":
            (cx, cy), (px, py) = xy
            r = math.hypot(cx - px, cy - py)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=1, fill=1)
        elif s["shape_type"] == "rectangle":
            (x0, y0), (x1, y1) = xy
            draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=1, fill=1)
        elif s["shape_type"] in ("line", "linestrip"):
            draw.line(xy, fill=1, width=LABELME_LINE_WIDTH)
        elif s["shape_type"] == "point":
            (cx, cy), r = xy[0], LABELME_POINT_SIZE
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=1, fill=1)
        else:
            draw.polygon(xy, outline=1, fill=1)
        labels[np.array(canvas) > 0] = class_ids[s["label"]]
    return labels


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def labelme_dir(tmp_path):
    """ann/a.json (embedded PNG, every shape type), ann/b.json (imagePath with Windows separators to a JPEG
    one folder up), ann/c.json (imagePath beside it, a group_id instance of two polygons)."""
    ann = tmp_path / "ann"
    write_json(ann / "a.json", document(EVERY_TYPE, image=photo(seed=1)))
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "b.jpg").write_bytes(photo(30, 20, seed=2, fmt="JPEG"))
    write_json(ann / "b.json", document([shape("dog", "polygon", [[1, 1], [18, 2], [10, 27]]),
                                         shape("cat", "point", [[10, 10]])],  # paints over the dog
                                        image_path="..\\photos\\b.jpg", height=30, width=20))
    (ann / "c.png").write_bytes(photo(25, 35, seed=3))
    write_json(ann / "c.json", document([shape("bird", "polygon", [[1, 1], [10, 1], [5, 9]], group_id=4),
                                         shape("bird", "polygon", [[20, 10], [33, 12], [25, 23]], group_id=4),
                                         shape("bird", "rectangle", [[12, 14], [18, 22]]),
                                         shape("cat", "circle", [[30, 4], [33, 4]], group_id=4)],
                                        image_path="c.png", height=25, width=35))
    return ann


CLASS_IDS = {"background": 0, "bird": 1, "cat": 2, "dog": 3}


def test_every_shape_type_rasterised_as_labelme_with_pillow(labelme_dir, tmp_path):
    summary = import_labelme(labelme_dir, tmp_path / "out")
    assert summary["classes"] == ["background", "bird", "cat", "dog"]  # sorted labels, background first
    mask = Image.open(tmp_path / "out" / "masks" / "a.png")
    assert mask.mode == "P" and mask.size == (W, H)
    expected = drawn(EVERY_TYPE, CLASS_IDS)
    assert len(np.unique(expected)) == 4  # every class shows somewhere
    np.testing.assert_array_equal(np.array(mask), expected)
    # each type on its own is what Pillow draws (no shape hides another's mistake)
    for s in EVERY_TYPE:
        write_json(tmp_path / "one" / "x.json", document([s], image=photo()))
        import_labelme(tmp_path / "one", tmp_path / "one_out", classes=list(CLASS_IDS))
        np.testing.assert_array_equal(np.array(Image.open(tmp_path / "one_out" / "masks" / "x.png")),
                                      drawn([s], CLASS_IDS), err_msg=str(s["shape_type"]))


def test_images_embedded_and_beside_with_windows_separators(labelme_dir, tmp_path):
    out = tmp_path / "out"
    import_labelme(labelme_dir, out)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["a.png", "b.jpg", "c.png"]
    assert (out / "images" / "b.jpg").read_bytes() == (tmp_path / "photos" / "b.jpg").read_bytes()
    assert (out / "images" / "c.png").read_bytes() == (labelme_dir / "c.png").read_bytes()
    assert (out / "images" / "a.png").read_bytes() == photo(seed=1)
    b = np.array(Image.open(out / "masks" / "b.png"))
    np.testing.assert_array_equal(b, drawn(json.loads((labelme_dir / "b.json").read_text())["shapes"], CLASS_IDS,
                                           30, 20))
    assert b[10, 10] == CLASS_IDS["cat"]  # the later point paints over the polygon


def test_folder_output_passes_data_check_and_loads(labelme_dir, tmp_path, capsys):
    out = tmp_path / "out"
    main(["data", "import", "labelme", str(labelme_dir), "--out", str(out),
          "--classes", "background,bird,cat,dog,fish"])
    assert (out / "classes.txt").read_text().splitlines() == ["background", "bird", "cat", "dog", "fish"]
    main(["data", "check", str(out), "--format", "folder"])  # exits with status 1 on any error
    assert "3 images, no " in capsys.readouterr().out  # "no problems found" (or "no errors" and warnings, e.g.
    # that fish has no pixels, where the check reports warnings)
    dataset = FolderSegmentation(out)
    assert dataset.stems == ["a", "b", "c"] and len(dataset.classes) == 5
    image, target = dataset[0]
    assert image.shape == (3, H, W)
    np.testing.assert_array_equal(target["mask"].numpy(), drawn(EVERY_TYPE, CLASS_IDS))


def test_instances_json_groups_by_group_id_and_loads_in_coco_instances(labelme_dir, tmp_path):
    out = tmp_path / "out"
    main(["data", "import", "labelme", str(labelme_dir), "--out", str(out), "--instances"])
    dataset = COCOInstances(out / "train2017", out / "annotations" / "instances_train2017.json")
    assert dataset.classes == ("background", "bird", "cat", "dog")
    assert len(build_dataset("coco", "train", root=out)) == 3
    index = [dataset.coco.imgs[i]["file_name"] for i in dataset.ids].index("c.png")
    image, target = dataset[index]
    shapes = json.loads((labelme_dir / "c.json").read_text())["shapes"]
    group = drawn(shapes[:1], CLASS_IDS, 25, 35) | drawn(shapes[1:2], CLASS_IDS, 25, 35)
    # (bird, 4) = the two polygons; the rectangle alone; (cat, 4) is another instance: the label differs
    assert target["labels"].tolist() == [1, 1, 2]
    np.testing.assert_array_equal(target["masks"][0].numpy(), group > 0)
    np.testing.assert_array_equal(target["masks"][1].numpy(), drawn(shapes[2:3], CLASS_IDS, 25, 35) > 0)
    np.testing.assert_array_equal(target["masks"][2].numpy(), drawn(shapes[3:], CLASS_IDS, 25, 35) > 0)
    a = dataset[[dataset.coco.imgs[i]["file_name"] for i in dataset.ids].index("a.png")][1]
    assert len(a["labels"]) == len(EVERY_TYPE)  # no group_id: one shape, one instance
    np.testing.assert_array_equal(a["masks"][6].numpy(), drawn(EVERY_TYPE[6:7], CLASS_IDS) > 0)


def test_exif_rotated_photo_is_written_as_labelme_shows_it(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)  # stored 30 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display: shown 20 wide, 30 high
    Image.fromarray(pixels).save(tmp_path / "r.jpg", exif=exif)
    write_json(tmp_path / "r.json", document([shape("cat", "rectangle", [[2, 3], [10, 25]])], image_path="r.jpg",
                                             height=30, width=20))
    import_labelme(tmp_path, tmp_path / "out")
    assert Image.open(tmp_path / "out" / "images" / "r.jpg").size == (20, 30)
    assert Image.open(tmp_path / "out" / "masks" / "r.png").size == (20, 30)


@pytest.mark.parametrize("content, classes, message", [
    ("{not json", None, r"bad\.json: not a labelme file: not valid JSON"),
    (json.dumps({"imagePath": "x.png"}), None, r"bad\.json: not a labelme file: no 'shapes'"),
    (json.dumps(document([shape("zebra", "polygon", [[0, 0], [5, 0], [0, 5]])], image=photo())), ["background", "cat"],
     r"bad\.json: unknown class 'zebra'"),
    (json.dumps(document([shape("cat", "polygon", [[0, 0], [5, 0]])], image=photo())), None,
     r"bad\.json: shape #0 \('cat'\): polygon has 2 points; a polygon needs at least 3 points"),
    (json.dumps(document([shape("cat", "polygon", [[0, 0], [5, 0], [0, 5]])], image_path="img\\gone.jpg")), None,
     r"bad\.json: imagePath 'img\\\\gone\.jpg' names a missing image"),
    (json.dumps(document([shape("cat", "ellipse", [[0, 0], [5, 0]])], image=photo())), None,
     r"bad\.json: shape #0 \('cat'\): unknown shape_type 'ellipse'"),
    (json.dumps(document([shape("cat", "polygon", [[0, 0], [5, 0], [0, 5]])], image=photo(), height=9)), None,
     r"bad\.json: imageWidth x imageHeight 57x9 differs"),
])
def test_bad_input_is_a_one_line_error_naming_file_and_value(tmp_path, content, classes, message):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.json").write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        import_labelme(tmp_path / "in", tmp_path / "out", classes=classes)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_cli_reports_bad_input_on_one_line(tmp_path, capsys):
    write_json(tmp_path / "in" / "bad.json", document([shape("cat", "line", [[0, 0]])], image=photo()))
    with pytest.raises(SystemExit):
        main(["data", "import", "labelme", str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert "bad.json" in err and "line has 1 points" in err and "\n" not in err


def test_every_import_flag_says_what_it_does_and_its_default():
    data = build_parser()._subparsers._group_actions[0].choices["data"]
    importers = data._subparsers._group_actions[0].choices["import"]._subparsers._group_actions[0].choices
    assert set(importers) == {"labelme", "coco"}
    for parser in importers.values():
        for action in parser._actions:
            if action.dest != "help":
                assert action.help and "default: None" not in action.help, (parser.prog, action.dest)
                if action.option_strings:
                    assert "default" in action.help or "required" in action.help, (parser.prog, action.dest)


def test_instances_split_names_the_coco_folders(labelme_dir, tmp_path):
    summary = import_labelme(labelme_dir, tmp_path / "out", instances=True, split="val")
    assert summary["instances"] == len(EVERY_TYPE) + 2 + 3  # a: one per shape; b: two; c: three
    dataset = build_dataset("coco", "val", root=tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out" / "val2017").iterdir()) == ["a.png", "b.jpg", "c.png"]
    assert sum(len(dataset.target(i)["labels"]) for i in range(len(dataset))) == summary["instances"]
