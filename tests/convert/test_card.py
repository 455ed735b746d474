import re

import datasets
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
        other = schema.WDS_REPO if fmt == "parquet" else schema.PARQUET_REPO
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
