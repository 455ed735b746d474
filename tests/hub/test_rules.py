import json
import tarfile

import pyarrow.parquet as pq

from bioscan5m_hf import schema
from bioscan5m_hf.cli import main
from bioscan5m_hf.hub.rules import HubLimits, page_scan_bytes, verify_hub


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
    assert "parquet" in rules(verify_hub(out, HubLimits(page_scan_bytes=1000)))
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


def rename_members(out, names: dict[int, str]) -> None:
    """Rewrite the first tar shard with members ``i`` renamed to ``names[i]``."""
    import io

    path = first_shard(out, schema.WDS_REPO)
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for i, (name, data) in enumerate(members):
            info = tarfile.TarInfo(names.get(i, name))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_tar_member_names_that_would_not_group(out):
    rename_members(out, {0: "ABC.1.jpg"})
    assert any("[tar] member 'ABC.1.jpg'" in p for p in verify_hub(out).problems)


def test_hidden_tar_keys_are_reported(out):
    rename_members(out, {0: "__ABC1.jpg", 1: "__ABC1.json"})
    assert any("[tar] member '__ABC1.jpg' starts with '__'" in p for p in verify_hub(out).problems)


def test_report_says_what_the_viewer_shows(out):
    report = verify_hub(out)
    notes = "\n".join(report.notes)
    assert "BIOSCAN-5M: the viewer reads these Parquet files in place" in notes
    assert "every split is shown in full" in notes
    assert "configs (viewer: at most 4,000)" in notes and "entries in the fullest folder (10,000)" in notes
    small = verify_hub(out, HubLimits(convert_bytes=10_000))
    assert any("shown in part (partial-): cropped_256/pretrain" in n for n in small.notes)
    assert small.ok  # a partial view is a note, not a problem
    assert "[names]" in "".join(verify_hub(out, HubLimits(splits=3)).problems)


def test_wds_card_points_to_the_parquet_repo_for_browsing(out):
    text = (out / schema.WDS_REPO / schema.CARD).read_text()
    assert "only up to 5 GB per split" in text and "Every split of this copy is under that size" in text
    assert "[`bioscan-ml/BIOSCAN-5M-hf`]" in text
    assert "reads these Parquet files in place" in (out / schema.PARQUET_REPO / schema.CARD).read_text()


def test_original_full_sized_images_convert_and_pass(tmp_path):
    """~1 MB JPEGs (1024 x 768 with sensor-like grain): image row groups are cut by bytes, and the
    output passes verify --hub; the same table in 100-row groups would read more than a page allows."""
    from bioscan5m_hf.convert import ConvertOptions, convert, writers
    from bioscan5m_hf.tools.sample import write_sample

    write_sample(tmp_path / "rel", 150, 3, ("original_full",), layout=("zips",), grain=16, show_progress=False)
    result = convert(tmp_path / "rel", tmp_path / "out", ConvertOptions(packages=("original_full",),
                                                                        show_progress=False))
    shard = first_shard(tmp_path / "out", schema.PARQUET_REPO, "original_full", "pretrain")
    meta = pq.ParquetFile(shard).metadata
    sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    assert len(sizes) > 1 and max(sizes) < writers.IMAGE_ROW_GROUP_ROWS  # cut by record hash or bytes, not at 100 rows
    table = pq.read_table(shard)
    images = table.column(schema.IMAGE_COLUMN).combine_chunks().field("bytes")
    assert sum(len(b) for b in images.to_pylist()) / len(table) > 800_000  # realistic JPEG sizes
    report = verify_hub(tmp_path / "out")
    assert report.ok, report.problems
    assert result.manifests["parquet"]["configs"]["original_full"]["pretrain"]["num_records"] == len(table)
    pq.write_table(table, shard, row_group_size=100, write_page_index=True)  # the old fixed 100 rows
    limits = HubLimits(page_scan_bytes=max(page_scan_bytes(meta, g) for g in range(meta.num_row_groups)) + 1)
    assert any("the viewer reads at most to serve one page" in p for p in verify_hub(tmp_path / "out", limits).problems)


def test_writer_defaults_are_datasets_own_and_reported_with_their_source(out):
    """verify --hub holds the Parquet files to the settings datasets writes them with (its config, read
    here from the installed datasets), names the source of each, and flags a file written otherwise."""
    import datasets.config
    from datasets.utils.py_utils import convert_file_size_to_int

    from bioscan5m_hf.hub.rules import WriterDefaults

    writer = WriterDefaults()
    assert dict(writer.cdc_options) == datasets.config.DEFAULT_CDC_OPTIONS
    assert writer.row_group_bytes == convert_file_size_to_int(datasets.config.MAX_ROW_GROUP_SIZE)
    assert writer.shard_bytes == convert_file_size_to_int(datasets.config.MAX_SHARD_SIZE)
    report = verify_hub(out)
    assert report.ok, report.problems
    note = next(n for n in report.notes if "written as datasets writes Parquet" in n)
    for source in ("datasets.config.DEFAULT_CDC_OPTIONS", "datasets.arrow_writer.ParquetWriter",
                   "datasets.config.MAX_ROW_GROUP_SIZE", "datasets.config.MAX_SHARD_SIZE"):
        assert source in note
    shard = first_shard(out, schema.PARQUET_REPO)
    pq.write_table(pq.read_table(shard), shard, write_page_index=True)  # pyarrow's defaults: no chunking by content
    report = verify_hub(out)
    rel = shard.relative_to(out).as_posix()
    assert any(rel in p and "[writer] data pages are not content-defined chunked" in p for p in report.problems)
