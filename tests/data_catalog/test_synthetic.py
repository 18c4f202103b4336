"""The procedural twins: determinism, resolution independence, class layouts, modality appearance."""
import numpy as np
import pytest
from scipy import ndimage

from data_catalog.catalog import get_card
from data_catalog.schema import CardError, card_from_dict
from data_catalog.synthetic import SPLIT_OFFSET, TWINS, render_pairs, synthetic_task

# Foreground class counts from the task list of the brief (sec. 4.1.1), not from the generator.
N_CLASSES = {**dict.fromkeys(["fundus-a", "fundus-b", "fundus-c", "fundus-d", "pancreas", "kits", "lits",
                              "segpc"], 2),
             **dict.fromkeys(["mms-a", "mms-b", "mms-c", "mms-d", "goals"], 3),
             **dict.fromkeys(["brats-t1", "brats-t1ce", "brats-t2", "brats-flair", "glas", "busi", "qatav2",
                              "polyp", "isic18", "drive", "ddti", "promise12"], 1)}
GREY = {"mms-a", "mms-b", "mms-c", "mms-d", "brats-t1", "brats-t1ce", "brats-t2", "brats-flair", "pancreas",
        "kits", "lits", "busi", "qatav2", "goals", "ddti", "promise12"}
TASKS = sorted(N_CLASSES)
CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)


def _card(name="twin", classes=("a",), synthetic=None):
    raw = {"name": name, "modality": "m", "anatomy": "a", "objective": "o", "classes": list(classes)}
    if synthetic is not None:
        raw["synthetic"] = synthetic
    return card_from_dict(raw)


def _touches(mask, label, others):
    """Per sample: does any pixel of `label` have a 4-neighbour whose label is in `others`?"""
    near = np.isin(mask, others)
    out = []
    for m, nb in zip(mask == label, near):
        out.append(bool((ndimage.binary_dilation(nb, CROSS) & m).any()))
    return np.array(out)


def test_every_catalog_task_has_a_twin_matching_its_card():
    assert set(TWINS) == set(N_CLASSES)
    for name in TASKS:
        card = get_card(name)
        assert card.n_classes == N_CLASSES[name]
        assert TWINS[name] == (card.synthetic["recipe"], card.synthetic.get("variant")), name


@pytest.mark.parametrize("name", TASKS)
def test_values_dtypes_and_class_layout(name):
    images, masks = render_pairs(name, 24, 32, seed=1)
    assert images.shape == (24, 3, 32, 32) and images.dtype == np.float32
    assert masks.shape == (24, 32, 32) and masks.dtype == np.uint8
    assert np.isfinite(images).all() and images.min() >= -1 and images.max() <= 1
    assert images.std() > 0.05  # not a blank canvas
    c = N_CLASSES[name]
    assert set(np.unique(masks)) == set(range(c + 1))
    for label in range(1, c + 1):  # every foreground class in most samples
        present = (masks == label).any(axis=(1, 2)).mean()
        assert present >= 0.6, f"{name}: class {label} only in {present:.0%} of samples"
    grey = np.abs(images[:, 0] - images[:, 1]).max() + np.abs(images[:, 0] - images[:, 2]).max()
    if name in GREY:
        assert grey == 0
    else:
        assert np.abs(images[:, 0] - images[:, 2]).mean() > 0.05


@pytest.mark.parametrize("name", ["fundus-a", "mms-b", "segpc", "busi"])
def test_deterministic_per_seed_and_index(name):
    a_img, a_mask = render_pairs(name, 6, 32, seed=7)
    b_img, b_mask = render_pairs(name, 6, 32, seed=7)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    c_img, c_mask = render_pairs(name, 6, 32, seed=8)
    assert not np.array_equal(a_mask, c_mask) and np.abs(a_img - c_img).mean() > 0.01
    # Sample i does not depend on the batch it is rendered in (nor on the chunks rendered inside).
    big_img, big_mask = render_pairs(name, 40, 32, seed=7)
    part_img, part_mask = render_pairs(name, 5, 32, seed=7, start=30)
    assert np.array_equal(big_img[30:35], part_img) and np.array_equal(big_mask[30:35], part_mask)
    assert np.array_equal(big_img[:6], a_img)


@pytest.mark.parametrize("name", TASKS)
def test_same_scene_at_every_resolution(name):
    img64, m64 = render_pairs(name, 8, 64, seed=2)
    img32, m32 = render_pairs(name, 8, 32, seed=2)
    # A 32^2 pixel centre lies between two 64^2 ones; geometry drawn in continuous coordinates
    # differs only along boundaries (thin vessels and layers at 32^2 being the worst case).
    agree = (m64[:, ::2, ::2] == m32).mean()
    assert agree > 0.9, f"{name}: masks agree on {agree:.1%} of pixels"
    # Pixel noise differs; 8x8 block means of the image do not.
    blocks64 = img64.reshape(8, 3, 8, 8, 8, 8).mean(axis=(3, 5))
    blocks32 = img32.reshape(8, 3, 8, 4, 8, 4).mean(axis=(3, 5))
    assert np.abs(blocks64 - blocks32).mean() < 0.1


def test_nested_structures():
    masks = {n: render_pairs(n, 32, 64, seed=4)[1] for n in
             ["fundus-a", "fundus-d", "mms-a", "mms-c", "segpc", "pancreas", "kits", "lits"]}
    for n in ("fundus-a", "fundus-d"):  # optic cup inside the disc rim
        assert not _touches(masks[n], 2, [0]).any()
    for n in ("mms-a", "mms-c"):  # LV enclosed by myocardium; RV hugs the myocardium
        assert not _touches(masks[n], 1, [0, 3]).any()
        has_rv = (masks[n] == 3).any(axis=(1, 2))
        assert _touches(masks[n], 3, [2])[has_rv].all()
    assert not _touches(masks["segpc"], 2, [0]).any()  # nucleus inside its cytoplasm
    for n in ("pancreas", "kits", "lits"):  # tumour inside its organ
        assert not _touches(masks[n], 2, [0]).any()


@pytest.mark.parametrize("name", ["brats-t1", "brats-flair"])
def test_brain_tumour_lies_inside_the_brain(name):
    images, masks = render_pairs(name, 16, 64, seed=5)
    for img, mask in zip(images[:, 0], masks):
        # Head = the filled region brighter than air; the brain lies >= 0.09 (~3 px) inside it.
        head = ndimage.binary_fill_holes(ndimage.uniform_filter(img, 3) > -0.75)
        brain = ndimage.binary_erosion(head, CROSS, iterations=2)
        tumour = mask == 1
        assert tumour.any() and (tumour & ~brain).sum() <= 0.01 * tumour.sum()


def test_oct_layers_are_stacked_in_order():
    _, masks = render_pairs("goals", 16, 64, seed=6)
    rows = np.arange(64)[None, :, None]
    for upper, lower in [(1, 2), (2, 3)]:
        deepest_upper = np.where(masks == upper, rows, -1).max(axis=1)
        shallowest_lower = np.where(masks == lower, rows, 99).min(axis=1)
        both = (deepest_upper >= 0) & (shallowest_lower < 99)
        assert both.mean() > 0.8 and (deepest_upper[both] < shallowest_lower[both]).all()


def test_vessels_stay_inside_the_field_of_view():
    images, masks = render_pairs("drive", 8, 64, seed=1)
    t = (np.arange(64) + 0.5) / 32 - 1
    outside = np.hypot(t[None, :], t[:, None]) > 0.97
    assert masks[:, outside].max() == 0 and images[:, :, outside].max() < -0.9
    assert 0.03 < masks.mean() < 0.25


@pytest.mark.parametrize("name", ["busi", "ddti", "isic18"])
def test_lesions_are_darker_than_their_surroundings(name):
    images, masks = render_pairs(name, 16, 64, seed=3)
    darker = []
    for img, m in zip(images.mean(1), masks == 1):
        if m.sum() < 10:
            continue
        ring = ndimage.binary_dilation(m, CROSS, iterations=4) & ~ndimage.binary_dilation(m, CROSS, iterations=1)
        darker.append(img[m].mean() < img[ring].mean() - 0.1)
    assert np.mean(darker) > 0.8


def _families(names, statistic, n=32):
    return {name: statistic(*render_pairs(name, n, 32, seed=0)) for name in names}


def test_fundus_sites_differ_in_colour_but_share_the_layout():
    names = ["fundus-a", "fundus-b", "fundus-c", "fundus-d"]
    colour = _families(names, lambda img, m: img.mean(axis=(0, 2, 3)))
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(colour[a] - colour[b]).max() > 0.08, (a, b)
    # Same geometry distribution: disc and cup areas within 30 % of each other across sites.
    areas = _families(names, lambda img, m: np.array([(m >= 1).mean(), (m == 2).mean()]), n=48)
    mean = np.mean(list(areas.values()), axis=0)
    assert all((np.abs(v - mean) < 0.3 * mean).all() for v in areas.values())


def test_mr_vendors_differ_in_intensity_and_noise():
    names = ["mms-a", "mms-b", "mms-c", "mms-d"]
    stats = _families(names, lambda img, m: np.array([img.mean(), img[:, 0][m == 1].mean(),
                                                       img[:, 0][m == 2].mean()]))
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(stats[a] - stats[b]).max() > 0.08, (a, b)
    for s in stats.values():  # the layout is the same: bright blood pool, dark myocardium
        assert s[1] > s[2] + 0.3


def test_brats_sequences_have_their_contrasts():
    def contrast(img, m):  # tumour minus the rest of the head (pixels brighter than air)
        g = img[:, 0]
        head = (g > -0.7) & (m == 0)
        return g[m == 1].mean() - g[head].mean()
    c = _families(["brats-t1", "brats-t1ce", "brats-t2", "brats-flair"], contrast)
    assert c["brats-t1"] < -0.1  # T1: tumour hypointense
    assert c["brats-t2"] > 0.1 and c["brats-flair"] > 0.1  # T2, FLAIR: oedema bright
    names = list(c)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert abs(c[a] - c[b]) > 0.05, (a, b, c)


def test_synthetic_task_splits_are_disjoint_and_stable():
    card = _card("twin-fundus", ["disc", "cup"], {"recipe": "fundus", "variant": "Canon CR-2"})
    task = synthetic_task(card, image_size=32, n_train=6, n_val=3, n_test=4, seed=0)
    assert task.origin == "synthetic(seed=0)" and task.card is card
    assert (len(task.train), len(task.val), len(task.test)) == (6, 3, 4)
    keys = [{s.images[i].tobytes() for i in range(len(s))} for s in (task.train, task.val, task.test)]
    assert len(keys[0] | keys[1] | keys[2]) == 13
    # The test split is the same whatever n_train is (index ranges start at fixed offsets).
    other = synthetic_task(card, image_size=32, n_train=2, n_val=3, n_test=4, seed=0)
    assert np.array_equal(other.test.images, task.test.images)
    img, mask = render_pairs("fundus-c", 2, 32, start=SPLIT_OFFSET * 2)  # same recipe, other task key
    assert not np.array_equal(mask, task.test.masks[:2])
    assert not np.array_equal(synthetic_task(card, 32, 6, 3, 4, seed=1).train.images, task.train.images)


def test_synthetic_task_uses_the_catalog_twin_without_a_synthetic_field():
    task = synthetic_task(_card("isic18", ["lesion"]), image_size=16, n_train=2, n_val=1, n_test=1)
    img, mask = render_pairs("isic18", 2, 16)
    assert np.array_equal(task.train.images, img) and np.array_equal(task.train.masks, mask)


def test_synthetic_task_rejects_bad_cards_and_sizes():
    with pytest.raises(CardError, match="draws 3"):
        synthetic_task(_card("x", ["a"], {"recipe": "cardiac-mr", "variant": "GE"}), 16, 2, 1, 1)
    with pytest.raises(CardError, match="unknown synthetic recipe 'mri'"):
        synthetic_task(_card("x", ["a"], {"recipe": "mri"}), 16, 2, 1, 1)
    with pytest.raises(CardError, match="no variant 'T3'"):
        synthetic_task(_card("x", ["a"], {"recipe": "brain-mr", "variant": "T3"}), 16, 2, 1, 1)
    with pytest.raises(CardError, match="no synthetic twin"):
        synthetic_task(_card("my-task", ["a"]), 16, 2, 1, 1)
    with pytest.raises(ValueError, match="n_val"):
        synthetic_task(_card("isic18", ["lesion"]), 16, 2, 0, 1)
    with pytest.raises(ValueError, match="image_size"):
        synthetic_task(_card("isic18", ["lesion"]), 4, 2, 1, 1)
    with pytest.raises(ValueError, match="no synthetic twin for task 'nope'"):
        render_pairs("nope", 2, 16)
