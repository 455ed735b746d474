import json
import tarfile

import pyarrow.parquet as pq

from bioscan5m_hf import schema
from bioscan5m_hf.cli import main
from bioscan5m_hf.hub.rules import HubLimits, verify_hub


def first_shard(out, repo, config="cropped_256", split="val"):
    manifest = json.loads((out / repo / schema.MANIFEST).read_text())
    return out / repo / manifest["configs"][config][split]["shards"][0]["path"]


def rules(report):
    return {p.split("[", 1)[1].split("]", 1)[0] for p in report.problems}


def test_converted_output_passes(out, capsys):
    report = verify_hub(out)
    assert report.ok, report.problems
    assert main(["verify", str(out), "--hub"]) == 0
    assert "Hub rules: OK" in capsys.readouterr().out


def test_card_that_does_not_parse_or_match(out):
    card = out / schema.PARQUET_REPO / schema.CARD
    text = card.read_text()
    card.write_text(text.replace("dtype: float64", "dtype: float32", 1))
    assert any("[card] dataset_info features of 'cropped_256' differ" in p for p in verify_hub(out).problems)
    card.write_text("---\nconfigs: [unclosed\n---\n")
    assert any("[card] does not parse" in p for p in verify_hub(out).problems)


def test_invalid_split_name(out):
    repo = out / schema.WDS_REPO
    manifest = json.loads((repo / schema.MANIFEST).read_text())
    info = manifest["configs"]["cropped_256"].pop("val")
    for s in info["shards"]:
        new = s["path"].replace("/val/", "/val-x/")
        (repo / new).parent.mkdir(parents=True, exist_ok=True)
        (repo / s["path"]).rename(repo / new)
        s["path"] = new
    manifest["configs"]["cropped_256"]["val-x"] = info
    (repo / schema.MANIFEST).write_text(json.dumps(manifest))
    problems = verify_hub(out).problems
    assert any("[names] split name 'val-x' is not valid" in p for p in problems)


def test_parquet_rules(out):
    assert "parquet" in rules(verify_hub(out, HubLimits(row_group_bytes=1000)))
    path = first_shard(out, schema.PARQUET_REPO)
    table = pq.read_table(path)
    pq.write_table(table, path, write_page_index=False)
    assert any("no page index" in p for p in verify_hub(out).problems)
    pq.write_table(table.replace_schema_metadata(None), path, write_page_index=True)
    assert any("the image column is not tagged as a datasets Image" in p for p in verify_hub(out).problems)


def test_file_count_and_size_rules(out):
    assert any("[files]" in p and "in one folder" in p for p in verify_hub(out, HubLimits(files_per_folder=3)).problems)
    assert any("per repo" in p for p in verify_hub(out, HubLimits(files_per_repo=10)).problems)
    assert any("per file" in p for p in verify_hub(out, HubLimits(file_bytes=1000)).problems)


def test_tar_member_names_that_would_not_group(out):
    path = first_shard(out, schema.WDS_REPO)
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    members[0] = ("ABC.1.jpg", members[0][1])
    import io

    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert any("[tar] member 'ABC.1.jpg'" in p for p in verify_hub(out).problems)
