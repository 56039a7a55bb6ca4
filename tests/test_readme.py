"""The README's generated blocks come from the files they name."""

from iri_alignment.readme import fill


def test_fill_replaces_only_the_marked_blocks(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "summary.md").write_text("| a | b |\n|---|---|\n| 1 | 2 |\n")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- BEGIN generated: results/summary.md -->\nold numbers\n"
                      "<!-- END generated: results/summary.md -->\noutro\n")
    assert fill(readme, tmp_path) == (["results/summary.md"], [])
    assert readme.read_text() == ("intro\n<!-- BEGIN generated: results/summary.md -->\n| a | b |\n|---|---|\n| 1 | 2 |\n"
                                  "<!-- END generated: results/summary.md -->\noutro\n")
    assert fill(readme, tmp_path) == (["results/summary.md"], [])  # idempotent


def test_a_missing_source_is_named_and_its_block_kept(tmp_path):
    readme = tmp_path / "README.md"
    text = "<!-- BEGIN generated: results/nope.md -->\nx\n<!-- END generated: results/nope.md -->\n"
    readme.write_text(text)
    assert fill(readme, tmp_path) == ([], ["results/nope.md"])
    assert readme.read_text() == text
