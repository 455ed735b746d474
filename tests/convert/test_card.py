import re

import datasets
import pytest
import torch
import yaml
from huggingface_hub import DatasetCard

from bioscan5m_hf import schema
from bioscan5m_hf.convert.card import render, size_category


def test_card_parses_and_matches_the_data(converted_zips):
    for fmt in schema.FORMATS:
        repo = converted_zips.repos[fmt]
        manifest = converted_zips.manifests[fmt]
        card = DatasetCard.load(repo / "README.md")
        data = card.data.to_dict()
        assert data["license"] == "cc-by-3.0"
        assert "biology" in data["tags"] and data["size_categories"] == ["n<1K"]
        assert [c["config_name"] for c in data["configs"]] == list(manifest["configs"])
        assert data["configs"][0]["default"] is True
        for info in data["dataset_info"]:
            splits = manifest["configs"][info["config_name"]]
            assert {s["name"]: s["num_examples"] for s in info["splits"]} == \
                {s: v["num_records"] for s, v in splits.items()}
            loaded = datasets.load_dataset(str(repo), info["config_name"], split="val")
            assert datasets.Features._from_yaml_list(info["features"]) == loaded.features
        assert "@inproceedings{gharaee2024bioscan5m" in card.text
        assert not re.search(r"\{\{[a-z_]+\}\}", card.text)  # every placeholder filled
        other = schema.HUB_NAME + "-wds" if fmt == "parquet" else schema.HUB_NAME
        assert f"bioscan-ml/{other}" in card.text


def test_card_tables_list_every_split_and_field(converted_zips):
    manifest = converted_zips.manifests["parquet"]
    text = render(manifest)
    for name in schema.COLUMN_NAMES:
        assert f"| `{name}` |" in text
    for split, v in manifest["configs"]["cropped_256"].items():
        assert f"| `cropped_256` | `{split}` | {v['num_records']:,} |" in text
    header = yaml.safe_load(text.split("---")[1])
    assert header["pretty_name"] == "BIOSCAN-5M"


def test_size_category():
    assert size_category(400) == "n<1K"
    assert size_category(5_150_850) == "1M<n<10M"


def test_task_categories_are_the_hubs_image_task_ids(converted_zips):
    from bioscan5m_hf.convert.card import card_yaml

    tasks = card_yaml(converted_zips.manifests["parquet"])["task_categories"]
    assert tasks == ["image-classification", "zero-shot-image-classification", "image-feature-extraction"]


def test_dataset_info_sizes_are_what_datasets_records(converted_zips):
    """num_bytes per split is the Arrow bytes `datasets` records when it prepares the split
    (verification_mode="all_checks"); download_size the files' bytes; dataset_size their sum."""
    for fmt in schema.FORMATS:
        repo = converted_zips.repos[fmt]
        manifest = converted_zips.manifests[fmt]
        data = DatasetCard.load(repo / "README.md").data.to_dict()
        for info in data["dataset_info"]:
            config = info["config_name"]
            splits = manifest["configs"][config]
            assert info["download_size"] == sum(v["num_bytes"] for v in splits.values())
            assert info["dataset_size"] == sum(s["num_bytes"] for s in info["splits"])
            if config != "cropped_256" and fmt == "webdataset":
                continue
            loaded = datasets.load_dataset(str(repo), config, verification_mode="all_checks")
            for s in info["splits"]:
                recorded = loaded[s["name"]].info.splits[s["name"]].num_bytes
                if fmt == "parquet":
                    assert s["num_bytes"] == recorded, (config, s["name"])
                    continue
                # `__url__` holds the path datasets read each tar from; the card counts the repo path.
                urls = loaded[s["name"]]["__url__"]
                rel = [u[len(str(repo)) + 1:] for u in urls]
                expected = recorded - sum(len(u.encode()) - len(r.encode()) for u, r in zip(urls, rel))
                # Equal but for validity bitmaps and offsets, which depend on datasets' batching.
                assert abs(s["num_bytes"] - expected) <= 64 + len(urls) // 4, (config, s["name"])


def test_the_cards_loading_code_runs_on_the_repo(converted_zips):
    """The Parquet card's first code block, with its repo id pointing at the converted folder."""
    repo = converted_zips.repos["parquet"]
    text = (repo / "README.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    repo_id = re.search(r'load_dataset\("([^"]+)"', code).group(1)
    scope: dict = {}
    exec(code.replace(f'"{repo_id}"', repr(str(repo))), scope)  # noqa: S102 - the card's own text, written by us
    row = next(iter(scope["fast"]))
    assert set(row) == {"processid", "image", "dna_barcode", "species"} and row["image"]["bytes"][:2] == b"\xff\xd8"
    assert set(next(iter(scope["dna"]))) == {"processid", "dna_barcode", "species"}
    assert scope["part"].num_shards >= 1  # this rank's part of the image rows, batched for BatchCollate
    assert set(scope["loader"].dataset.features) == {"processid", "image", "dna_barcode", "species"}
    batches = scope["batches"]  # the card's dataset and collate, with 2 workers
    b = next(iter(torch.utils.data.DataLoader(batches.dataset, batch_size=None, num_workers=2,
                                              collate_fn=batches.collate_fn)))
    assert b["image"].dtype == torch.uint8 and b["image"].shape[1:] == (3, 256, 256)
    assert b["dna"].shape == (len(b["processid"]), 165)
    assert len(b["species"]) == len(b["processid"])  # labels as given: no vocabulary in the card's example


def test_the_cards_sql_and_dataframe_examples_run_on_a_local_clone(converted_zips):
    """The Parquet card's DuckDB and Polars block, pointed at the converted folder instead of hf://
    (tests/test_docs.py runs it as written, against the loopback Hub): counts per split and rank
    that match the manifest, and the join of image bytes by processid."""
    pytest.importorskip("duckdb")
    pytest.importorskip("polars")
    repo = converted_zips.repos["parquet"]
    text = render(converted_zips.manifests["parquet"], namespace="org", name="data")
    start = text.index("import duckdb")
    code = text[start: text.index("```", start)]
    local = {"fs = HfFileSystem()": "import fsspec\nfs = fsspec.filesystem('file')",
             'fs.glob(f"datasets/org/data/{files}")': f'fs.glob(f"{repo}/{{files}}")'}
    for a, b in local.items():
        assert a in code
        code = code.replace(a, b)
    ns: dict = {}
    exec(compile(code, "card block", "exec"), ns)
    splits = converted_zips.manifests["parquet"]["configs"]["metadata"]
    assert {row[0]: row[1] for row in ns["per_split"]} == {s: v["num_records"] for s, v in splits.items()}
    assert all(row[2] >= row[3] >= row[4] >= row[5] for row in ns["per_split"])  # labels thin out by rank
    val = datasets.load_dataset(str(repo), "cropped_256", split="val")
    val = val.cast_column("image", datasets.Image(decode=False))
    jpeg = {r["processid"]: r["image"]["bytes"] for r in val if r["order"] == "Diptera"}
    assert {pid: data for pid, _, data in ns["diptera"]} == jpeg and jpeg
    assert ns["per_order"]["len"].sum() == sum(v["num_records"] for v in splits.values())
