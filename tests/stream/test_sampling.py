"""Metadata filters pushed down to the shards, class-balanced sampling and weighted split mixtures."""

import math
from collections import Counter

import pandas as pd
import pyarrow.compute as pc
import pytest
import torch

from bioscan5m_hf import BIOSCAN5M, StreamingBIOSCAN5M, schema
from bioscan5m_hf.options import Composition
from bioscan5m_hf.repo import readers

from ..conftest import interrupted, small_conversion, stream_loader


def pids(root, split="pretrain", **kw):
    ds = StreamingBIOSCAN5M(root, split, modality=("processid",), target_type=[], output_format="dict", **kw)
    return [s["processid"] for s in ds], ds


def csv(release):
    return pd.read_csv(release / schema.METADATA_CSV, dtype=str, keep_default_na=False, na_values=[""])


def test_filter_matches_a_pandas_filter_of_the_csv(release, converted_zips):
    root = converted_zips.repos["parquet"].parent
    frame = csv(release)
    pretrain = frame[frame["split"] == "pretrain"]
    orders = pretrain["order"].dropna().value_counts().index[:2].tolist()
    want = pretrain[pretrain["order"].isin(orders) & pretrain["family"].notna()]
    expression = pc.field("order").isin(orders) & pc.field("family").is_valid()
    for repo in (schema.PARQUET_REPO, schema.WDS_REPO):
        got, ds = pids(converted_zips.repos["parquet"].parent / repo, shuffle=True,
                       composition=Composition(filter=expression))
        assert sorted(got) == sorted(want["processid"]) and len(ds) == len(want) > 0
    lat = pretrain[pd.to_numeric(pretrain["coord-lat"]) > 40]
    got, _ = pids(root, composition=Composition(filter=lambda t: pc.greater(t.column("coord-lat"), 40)))
    assert sorted(got) == sorted(lat["processid"])


def test_image_bytes_of_records_left_out_are_never_read(converted_zips, monkeypatch):
    root = converted_zips.repos["parquet"].parent / schema.WDS_REPO
    calls = []
    real = readers.read_records

    def spy(shard, offsets, columns, image, sparse=None):
        calls.append((shard.path, None if offsets is None else len(offsets), image))
        return real(shard, offsets, columns, image, sparse)

    monkeypatch.setattr("bioscan5m_hf.stream.records.read_records", spy)
    first, _ = pids(root)
    keep = first[:3]  # three records, at most three shards
    ds = StreamingBIOSCAN5M(root, "pretrain", modality=("image",), target_type=[], output_format="dict",
                            composition=Composition(filter=pc.field("processid").isin(keep)))
    calls.clear()
    assert len(ds) == 3 and len(list(ds)) == 3
    image_reads = [c for c in calls if c[2]]
    assert sum(n for _, n, _ in image_reads) == 3 and len(image_reads) <= 3  # only the kept records' shards


def test_a_filter_that_cannot_apply_names_itself(converted_zips):
    root = converted_zips.repos["parquet"].parent
    with pytest.raises(ValueError, match="cannot be evaluated"):
        pids(root, composition=Composition(filter=pc.field("no_such_column") == 1))
    with pytest.raises(TypeError, match="filter must be"):
        pids(root, composition=Composition(filter="order == 'Diptera'"))
    with pytest.raises(ValueError, match="only for the streaming dataset"):
        BIOSCAN5M(root, filter=pc.field("species").is_valid())


def proportions(labels):
    counts = Counter(labels)
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()}, total


@pytest.mark.parametrize("temperature", [0.0, 0.5, 1.0])
def test_class_balanced_sampling_matches_its_proportions(converted_zips, temperature):
    root = converted_zips.repos["parquet"].parent
    natural = Counter(o for o in (s["order"] for s in StreamingBIOSCAN5M(
        root, "pretrain", modality=("processid",), target_type="order", target_format="text",
        output_format="dict")) if isinstance(o, str))
    n = 6000
    ds = StreamingBIOSCAN5M(root, "pretrain", modality=("processid",), target_type="order", target_format="text",
                            output_format="dict", shuffle=True,
                            composition=Composition(balance="order", temperature=temperature, samples_per_epoch=n))
    got, total = proportions(s["order"] for s in ds)
    assert total == n == len(ds)
    mass = {c: k ** temperature for c, k in natural.items()}
    for c, m in mass.items():
        p = m / sum(mass.values())
        assert abs(got.get(c, 0.0) - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-9, (c, got.get(c), p)


def test_split_mixture_matches_its_weights_and_is_deterministic(converted_zips):
    root = converted_zips.repos["parquet"].parent
    kw = dict(shuffle=True, seed=2, composition=Composition(split_weights={"pretrain": 0.3, "train": 0.7},
                                                            samples_per_epoch=4000))
    ds = StreamingBIOSCAN5M(root, "pretrain+train", modality=("processid",), target_type=[], output_format="dict",
                            **kw)
    train = set(pids(root, "train")[0])
    epoch0 = [s["processid"] for s in ds]
    epoch1 = [s["processid"] for s in ds]
    share = sum(p in train for p in epoch0) / len(epoch0)
    assert abs(share - 0.7) < 5 * math.sqrt(0.21 / 4000)
    again = StreamingBIOSCAN5M(root, "pretrain+train", modality=("processid",), target_type=[],
                               output_format="dict", **kw)
    assert [s["processid"] for s in again] == epoch0 and epoch1 != epoch0  # per seed and epoch
    with pytest.raises(ValueError, match="split_weights names"):
        StreamingBIOSCAN5M(root, "pretrain", composition=Composition(split_weights={"train": 1.0}))


def test_sampled_epochs_resume_exactly_and_elastically(converted_zips):
    root = converted_zips.repos["parquet"].parent
    kw = dict(modality=("dna",), target_type="order", seed=4, buffer_size=16,
              composition=Composition(balance="order", temperature=0.3, samples_per_epoch=500))
    full = [p for b in stream_loader(root, "pretrain", batch_size=10, num_workers=2, **kw) for p in b["processid"]]
    assert len(full) == 500
    batches, state = interrupted(lambda: stream_loader(root, "pretrain", batch_size=10, num_workers=2, **kw), 7)
    assert [p for b in batches for p in b["processid"]] == full
    head = [p for b in batches[:7] for p in b["processid"]]
    elastic = []
    for r in range(3):  # the same draw, finished on three ranks
        other = stream_loader(root, "pretrain", batch_size=6, num_workers=1, rank=r, world_size=3, **kw)
        other.load_state_dict(state)
        elastic += [p for b in other for p, pad in zip(b["processid"], b["padding"].tolist()) if not pad]
    assert Counter(head + elastic) == Counter(full)


@pytest.mark.parametrize("modality", [("dna",), ("image", "dna")])  # the columnar path and the per-record one
def test_dna_masking_is_seeded_resumable_and_bert_like(converted_zips, modality):
    from bioscan5m_hf.transforms import IGNORE_INDEX, MASK_ID

    root = converted_zips.repos["parquet"].parent
    kw = dict(modality=modality, target_type="order", mask_dna=0.15, seed=1, image_size=16, batch_size=16,
              num_workers=2)
    batches = list(stream_loader(root, "pretrain", **kw))
    chosen = masked = real = 0
    for b in batches:
        picked = b["dna_labels"] != IGNORE_INDEX
        assert (b["dna_labels"][picked] == b["dna"][picked]).all()  # labels: the original ids
        assert (b["dna_masked"][~picked] == b["dna"][~picked]).all()  # only chosen tokens change
        assert not (picked & (b["dna_mask"] == 0)).any()  # never padding
        chosen += int(picked.sum())
        masked += int((b["dna_masked"][picked] == MASK_ID).sum())
        real += int(b["dna_mask"].sum())
    assert abs(chosen / real - 0.15) < 0.02 and abs(masked / chosen - 0.8) < 0.05
    resumed, _ = interrupted(lambda: stream_loader(root, "pretrain", **kw), 3)
    for a, b in zip(resumed, batches, strict=True):
        assert torch.equal(a["dna_masked"], b["dna_masked"]) and torch.equal(a["dna_labels"], b["dna_labels"])
    other = next(iter(stream_loader(root, "pretrain", **{**kw, "seed": 2})))
    assert not torch.equal(other["dna_labels"], batches[0]["dna_labels"])


@pytest.fixture(scope="module")
def other_release(tmp_path_factory):
    """Another converted release: other records, other label vocabularies."""
    return small_conversion(tmp_path_factory.mktemp("other"), 120, 99, 30)


def test_a_mixture_of_converted_repos_matches_its_weights(converted_zips, other_release):
    root = converted_zips.repos["parquet"].parent
    kw = dict(modality=("processid",), target_type="order", target_format="text", output_format="dict", shuffle=True,
              seed=5, composition=Composition(source_weights=[0.25, 0.75], samples_per_epoch=4000))
    ds = StreamingBIOSCAN5M([root, other_release], "pretrain", **kw)
    theirs = set(pids(other_release)[0])
    got = list(ds)
    share = sum(s["processid"] in theirs for s in got) / len(got)
    assert len(got) == 4000 and abs(share - 0.75) < 5 * math.sqrt(0.75 * 0.25 / 4000)
    # Label indices follow the union of both vocabularies, the same whichever repo a record is from.
    indexed = StreamingBIOSCAN5M([root, other_release], "pretrain", **{**kw, "target_format": "index"})
    vocab = indexed.records.vocabularies["order"]
    for text, index in zip(got[:200], indexed):
        assert text["order"] == (vocab[index["order_index"]] if index["order_index"] >= 0 else text["order"])
    loader = stream_loader([root, other_release], "pretrain", batch_size=50, num_workers=2, modality=("dna",),
                           target_type="order", composition=Composition(source_weights=[0.5, 0.5],
                                                                        samples_per_epoch=1000))
    assert sum(len(b["processid"]) for b in loader) == 1000
    with pytest.raises(ValueError, match="source_weights has 1 weights for 2 roots"):
        StreamingBIOSCAN5M([root, other_release], "pretrain", composition=Composition(source_weights=[1.0]))


def test_a_filter_over_http_fetches_only_the_records_kept(converted_zips):
    from ..servers.fileserver import RepoServer

    out = converted_zips.repos["parquet"].parent
    first, _ = pids(out / schema.WDS_REPO)
    keep = pc.field("processid").isin(first[::25])  # 4% of pretrain
    local, _ = pids(out / schema.WDS_REPO, composition=Composition(filter=keep))
    with RepoServer(out) as server:
        ds = StreamingBIOSCAN5M(f"{server.url}/{schema.WDS_REPO}", "pretrain", modality=("image", "processid"),
                                target_type=[], output_format="dict", composition=Composition(filter=keep))
        server.reset_counts()
        got = [s["processid"] for s in ds]
        served = server.shard_bytes()
    assert got == local and len(got) == len(first[::25])
    total = sum(p.stat().st_size for p in (out / schema.WDS_REPO / "cropped_256" / "pretrain").glob("*.tar"))
    assert served < 0.5 * total  # neighbours within 1 MiB share a request; the rest is never fetched
