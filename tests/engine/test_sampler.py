import itertools
import json

import pytest
import torch
from torch.utils.data import Subset

from seglab.data import COCOInstances, Shapes
from seglab.engine.sampler import EpochBatchSampler, SeededTransforms, aspect_ratio_groups


def test_sampler_resumed_at_a_position_continues_the_same_sequence():
    straight = list(itertools.islice(iter(EpochBatchSampler(10, 3, seed=5)), 8))
    sampler = EpochBatchSampler(10, 3, seed=5)
    sampler.start = sampler.position(4)
    resumed = list(itertools.islice(iter(sampler), 4))
    assert straight[4:] == resumed
    assert sampler.position(4) == (1, 1)  # 3 batches per epoch
    epoch0 = [i for batch in straight[:3] for _, i in batch]
    assert len(set(epoch0)) == 9  # a permutation, the last incomplete batch dropped


def test_seeded_transforms_depend_only_on_the_key_and_leave_global_rng_alone():
    class Items:
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.zeros(1), {"i": i}

    def noisy(image, target):
        return image + torch.rand(1), target

    dataset = SeededTransforms(Items(), noisy, seed=3)
    torch.manual_seed(0)
    a = dataset[(1, 2)][0]
    after = torch.rand(1)
    torch.manual_seed(0)
    dataset[(0, 0)]
    assert torch.equal(torch.rand(1), after)
    assert torch.equal(dataset[(1, 2)][0], a) and not torch.equal(dataset[(2, 2)][0], a)


def test_grouped_batches_hold_one_group_and_resume_exactly():
    groups = [0, 1, 1, 0, 1, 1, 0, 1, 0, 1, 1]  # 4 tall, 7 wide
    sampler = EpochBatchSampler(len(groups), 3, seed=5, groups=groups)
    assert sampler.batches_per_epoch == 1 + 2
    stream = iter(sampler)
    first = [next(stream) for _ in range(7)]
    for batch in first:
        assert len(batch) == 3 and len({groups[i] for _, i in batch}) == 1
    epoch0 = [i for batch in first[:3] for _, i in batch]
    assert len(set(epoch0)) == 9 and all(e == 0 for batch in first[:3] for e, _ in batch)
    resumed = EpochBatchSampler(len(groups), 3, seed=5, start=sampler.position(4), groups=groups)
    assert [next(iter(resumed)) for _ in range(1)] == first[4:5]


def test_aspect_ratio_groups_put_wide_and_tall_images_apart(tmp_path):
    # sizes from the json (get_height_and_width): no image file is read
    sizes = {3: (50, 30), 7: (30, 50), 12: (40, 40), 20: (32, 32)}  # image id: (H, W): tall, wide, squares
    images = [{"id": i, "file_name": f"{i}.png", "height": h, "width": w} for i, (h, w) in sizes.items()]
    (tmp_path / "images").mkdir()
    (tmp_path / "instances.json").write_text(
        json.dumps({"images": images, "annotations": [], "categories": [{"id": 1, "name": "thing"}]}))
    ds = COCOInstances(tmp_path / "images", tmp_path / "instances.json")
    assert aspect_ratio_groups(ds) == [0, 1, 1, 1]  # tall < 1 <= wide (square)
    # k = 1: edges 0.5, 1, 2 -> tall (0.6) in 1, wide (1.67) and squares in 2
    assert aspect_ratio_groups(ds, k=1) == [1, 2, 2, 2]
    assert aspect_ratio_groups(Subset(ds, [1, 0, 0])) == [1, 0, 0]
    assert aspect_ratio_groups(Shapes("val", 3, image_size=32)) == [1, 1, 1]  # sizes read from the items
    with pytest.raises(ValueError, match="k must be >= 0"):
        aspect_ratio_groups(ds, k=-1)
