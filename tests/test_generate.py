"""The built-in data generator: deterministic, structured as documented."""

from __future__ import annotations

import filecmp

import numpy as np

from tasks.recommender import generate
from tasks.recommender.dataset import read_catalogue, read_interactions, read_meta
from tasks.recommender.sequences import build_sequences


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generate.write(generate.generate(seed=seed, scale="small"), tmp_path / name)
    files = ["meta.json", "catalogue.csv", "cn/interactions.csv", "me/interactions.csv"]
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", files, shallow=False)
    assert match == files and not mismatch and not errors
    assert not filecmp.cmp(tmp_path / "a" / "cn/interactions.csv",
                           tmp_path / "c" / "cn/interactions.csv", shallow=False)  # fmt: skip


def test_regions_sizes_and_folders(small_data):
    meta = read_meta(small_data)
    assert len(meta.regions) >= 6
    users = {r: len(np.unique(read_interactions(small_data, r).user_id)) for r in meta.regions}
    assert max(users.values()) >= 10 * min(users.values())
    for r in meta.regions:
        assert sorted(p.name for p in (small_data / r).iterdir()) == ["interactions.csv"]


def test_last_two_events_after_cutoff_and_cold_items_unseen_in_training(small_data):
    meta = read_meta(small_data)
    catalogue = read_catalogue(small_data)
    cold = catalogue.launch_time >= meta.cutoff
    assert cold.any() and not cold.all()
    for r in meta.regions:
        seqs = build_sequences(read_interactions(small_data, r))
        ends = seqs.offsets[1:]
        assert (seqs.times[ends - 1] >= meta.cutoff).all()
        assert (seqs.times[ends - 2] >= meta.cutoff).all()
        train = np.ones(len(seqs.items), dtype=bool)
        train[ends - 1] = train[ends - 2] = False
        assert not cold[seqs.items[train]].any()
        # nothing is bought before it is on sale
        assert (seqs.times >= catalogue.launch_time[seqs.items]).all()


def test_regional_tastes_differ(small_data):
    catalogue = read_catalogue(small_data)
    share = {}
    for r in ("cn", "jp", "us"):
        items = read_interactions(small_data, r).item_id
        gems = catalogue.attributes["gem"][items]
        share[r] = {g: float(np.mean(gems == g)) for g in ("jade", "pearl", "diamond")}
    assert share["cn"]["jade"] > 2 * share["jp"]["jade"]
    assert share["jp"]["pearl"] > 2 * share["us"]["pearl"]
    assert share["us"]["diamond"] > 2 * share["cn"]["diamond"]
