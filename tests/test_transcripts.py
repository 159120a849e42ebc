"""Transcript tables (`--transcripts FILE`, kebr_core.extract.transcripts): reading TSV and CSV, matching
ids to videos, the order table → sidecar → ASR in `kebr extract`, and bad tables as one sentence."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from kebr_cli.main import app
from kebr_core.data.store import FeatureStore
from kebr_core.errors import KebrError
from kebr_core.extract.inputs import VideoItem, attach_transcripts
from kebr_core.extract.transcripts import read_transcript_table, table_id

import media  # tests/media.py

runner = CliRunner()


def write(path: Path, content: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(content.encode(encoding))
    return path


def test_tsv_and_csv_give_the_same_table(tmp_path: Path):
    tsv = write(tmp_path / "t.tsv", 'speaker\tid\ttext\nann\tclip01.mp4\ti "loved" it\n\nbob\tsub/clip02\t  so   slow \n')
    csv_file = write(tmp_path / "t.csv", 'id,text,speaker\n./clip01.MP4,"i ""loved"" it",ann\nsub\\clip02,"so\n slow",bob\n')
    expected = {"clip01": 'i "loved" it', "sub/clip02": "so slow"}
    assert read_transcript_table(tsv) == expected  # column order free, extra columns ignored, blank line skipped
    assert read_transcript_table(csv_file) == expected  # quotes, a line break in a field, Windows separators
    # No .tsv suffix: a tab in the header makes it TSV; a BOM is dropped; a quote opening a TSV field is text.
    txt = write(tmp_path / "t.txt", 'id\ttext\nclip01\t"quoted" start\n', encoding="utf-8-sig")
    assert read_transcript_table(txt) == {"clip01": '"quoted" start'}


def test_table_ids_drop_video_extensions_only():
    assert table_id(" ./a/b.mkv ") == "a/b" and table_id("a.WEBM") == "a"
    assert table_id("take.2") == "take.2" and table_id("v1.0/clip") == "v1.0/clip" and table_id("notes.txt") == "notes.txt"


@pytest.mark.parametrize("content, message", [
    ("clip01\thello\n", r"needs a header row with an id and a text column \(id<TAB>text\)"),
    ("id,words\na,hello\n", r"needs a header row with an id and a text column \(id,text\)"),
    ("id\ttext\n", "has no rows below its header"),
    ("", "needs a header row"),
    ("id\ttext\na\thi\nb\tho\na.mp4\tagain\n", r"names the id 'a' twice \(lines 2 and 4\)"),
    ("text\tid\nhello\n", "line 2 has 1 field\\(s\\), fewer than its header"),
    ("id\ttext\n \thello\n", "line 2 has an empty id"),
    ('id,text\na,"never closed\n', "is not valid CSV"),
])
def test_bad_tables_are_one_sentence_naming_file_and_line(tmp_path: Path, content: str, message: str):
    path = write(tmp_path / ("t.csv" if content.startswith("id,") else "t.tsv"), content)
    with pytest.raises(KebrError, match=message) as caught:
        read_transcript_table(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_unreadable_tables(tmp_path: Path):
    with pytest.raises(KebrError, match="does not exist"):
        read_transcript_table(tmp_path / "missing.tsv")
    with pytest.raises(KebrError, match="is not UTF-8 text"):
        read_transcript_table(write(tmp_path / "latin.tsv", "id\ttext\na\tcafé\n", encoding="latin-1"))
    with pytest.raises(KebrError, match="is a folder, not a file"):
        read_transcript_table(tmp_path)


def test_attach_gives_named_items_the_table_text_and_reports_the_rest(tmp_path: Path):
    items = [VideoItem(id=k, path=tmp_path / f"{k}.mp4", key=k) for k in ("a", "sub/b", "c")]
    table = write(tmp_path / "t.tsv", "id\ttext\nsub/b.mp4\tfrom the table\nelsewhere\tno video\n")
    attached, unmatched = attach_transcripts(items, table)
    assert [(it.text, it.text_source) for it in attached] == [(None, "manifest"), ("from the table", "table"), (None, "manifest")]
    assert unmatched == ["elsewhere"] and items[1].text is None  # the caller's items are left as they were

    none = write(tmp_path / "none.tsv", "id\ttext\nb\tthe stem is not the id\n")
    with pytest.raises(KebrError, match=r"None of the 1 ids in .*none.tsv names one of the videos .*e.g. 'a'"):
        attach_transcripts(items, none)
    twins = [VideoItem(id=str(p), path=p, key="clip") for p in (tmp_path / "x" / "clip.mp4", tmp_path / "y" / "clip.mp4")]
    with pytest.raises(KebrError, match="The id 'clip' in .* names 2 videos"):
        attach_transcripts(twins, write(tmp_path / "c.tsv", "id\ttext\nclip\thi\n"))
    manifest_items = [VideoItem(id="v$_$1", path=tmp_path / "v" / "1.mp4", key="v/1", text="from the manifest")]
    with pytest.raises(KebrError, match="already have transcripts from their manifest"):
        attach_transcripts(manifest_items, write(tmp_path / "m.tsv", "id\ttext\nv/1\thi\n"))


def test_cli_extract_reads_the_table_before_sidecars_and_asr(tmp_path: Path):
    videos = tmp_path / "videos"
    for name in ("one", "sub/two", "three"):
        media.make_clip(videos / f"{name}.mp4", "i like it", fps=5)
    (videos / "sub" / "two.txt").write_text("the sidecar of two\n")
    (videos / "three.txt").write_text("the sidecar of three\n")
    table = write(tmp_path / "transcripts.csv", "id,text\none,\"the table's one, with a comma\"\nsub/two.mp4,the table's two\nfour,no such video\n")
    out = tmp_path / "feats.h5"
    result = runner.invoke(app, ["extract", str(videos), "-o", str(out), "--transcripts", str(table), "--vision", "none",
                                 "--asr", "none", "--workers", "0"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    store = FeatureStore(out)
    got = {store.ids[i]: (store.text(i), store.text_sources[i]) for i in range(len(store))}
    assert got == {"one": ("the table's one, with a comma", "table"), "sub/two": ("the table's two", "table"),
                   "three": ("the sidecar of three", "sidecar")}  # the table wins over two's sidecar
    assert f"1 id(s) of {table} name no video here: four" in " ".join(result.output.split())

    for args, message in [
        (["--transcripts", str(tmp_path / "missing.tsv")], "The transcript table"),
        (["--transcripts", str(write(tmp_path / "bad.tsv", "id\ttext\nnobody\thi\n"))], "None of the 1 ids"),
    ]:
        bad = runner.invoke(app, ["extract", str(videos), "-o", str(tmp_path / "x.h5"), "--vision", "none", "--asr", "none", *args])
        assert bad.exit_code == 1 and message in bad.stderr and "Traceback" not in bad.output
        assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.h5").exists()
